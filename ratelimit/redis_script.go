package ratelimit

import (
	"strconv"

	"github.com/redis/rueidis"
)

// gcraScript checks one request against every rate of a key, on Redis's own
// clock, all-or-nothing. KEYS[i] holds the theoretical arrival time (TAT)
// of rate i, in microseconds of Redis's TIME; ARGV[2i-1] and ARGV[2i] are
// the rate's emission interval and tolerance (burst × interval) in
// microseconds.
//
// It writes only when every rate admits the request, and then sets each
// key to expire when its bucket is full again, so idle clients cost no
// memory. It replies with strings, "1" (admitted) or "0", then for each
// rate how far the TAT runs ahead of now after the decision, in
// microseconds: Redis would truncate Lua numbers it converts to integers,
// and %.0f prints an integral double exactly.
//
// Microseconds since 1970 stay below 2^53, and checkRate bounds the
// tolerance, so every number is exact in Lua's doubles. A value that is not
// a timestamp (someone else wrote the key) is an error reply before any
// write; a key of another type fails GET with WRONGTYPE, also before any
// write. No redis.replicate_commands(): scripts replicate their effects
// since Redis 5 (Valkey too), and TIME before a write is allowed.
const gcraScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
local ok = true
for i = 1, n do
  local tat = now
  local v = redis.call('GET', KEYS[i])
  if v then
    local x = tonumber(v)
    if not x or not (x > -1e16 and x < 1e16) then
      return redis.error_reply('ERR throttle: ' .. KEYS[i] .. ' does not hold a timestamp')
    end
    tat = math.max(x, now)
  end
  if tat + tonumber(ARGV[2*i-1]) - now > tonumber(ARGV[2*i]) then ok = false end
  tats[i] = tat
end
local out = {ok and '1' or '0'}
for i = 1, n do
  local tat = tats[i]
  if ok then
    tat = tat + tonumber(ARGV[2*i-1])
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  out[i+1] = string.format('%.0f', tat - now)
end
return out
`

var gcraLua = rueidis.NewLuaScript(gcraScript)

// redisLimit is a rate in the script's terms: microseconds, the interval
// rounded up so that rounding never admits more than the rate.
type redisLimit struct {
	limit        // the same rate in nanoseconds, for verdicts
	intervalUS   int64
	toleranceUS  int64
	suffix       string // ":<interval µs>x<burst>": state is never read under another rate
	argI, argTol string
}

// newRedisLimit converts a valid rate.
func newRedisLimit(r Rate) redisLimit {
	ivUS := (interval(r) + 999) / 1000
	tolUS := ivUS * int64(r.Burst)
	return redisLimit{
		limit:       limit{interval: ivUS * 1000, tolerance: tolUS * 1000},
		intervalUS:  ivUS,
		toleranceUS: tolUS,
		suffix:      ":" + strconv.FormatInt(ivUS, 10) + "x" + strconv.Itoa(r.Burst),
		argI:        strconv.FormatInt(ivUS, 10),
		argTol:      strconv.FormatInt(tolUS, 10),
	}
}
