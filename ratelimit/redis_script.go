package ratelimit

import (
	"strconv"

	"github.com/redis/rueidis"
)

// gcraScript checks one request against every rate of a key, and against
// its slots when it has `concurrent`, on Redis's own clock, all-or-nothing.
// KEYS[i] holds the theoretical arrival time (TAT) of rate i, in
// microseconds of Redis's TIME; with slots, the last key is the key's sorted
// set of leases (member: a request's lease, score: when it expires, in
// milliseconds of Redis's TIME). ARGV[1] is the request's cost in units,
// ARGV[2] the slots (0: none), ARGV[3] the lease in milliseconds, ARGV[4]
// the request's lease; then per rate its emission interval, tolerance
// (burst × interval) and cap (how far a TAT may lawfully run ahead of now:
// the tolerance, plus one burst of debt with cost_header), in microseconds.
//
// What it reads is clamped to the cap, and a TAT beyond it is written back
// clamped: a clock stepped backwards leaves TATs far ahead of the new now,
// and without the clamp would lock the client out for the length of the
// step; a lease scored more than one lease ahead (set before the step) is
// dropped for the same reason. Otherwise it writes only when the slots and every rate admit the
// request, and then sets each key to expire when its
// bucket is full again (the lease set when its last lease expires), so idle
// clients cost no memory. Expired leases (of a crashed instance) are
// dropped before counting. It replies with integers: 1 (admitted), 0
// (refused by a rate) or 2 (refused for want of a slot), the slots left,
// then for each rate how far the TAT runs ahead of now after the decision,
// in microseconds. Every one is integral (intervals are whole
// microseconds, TATs are stored with %.0f), so Redis's conversion of Lua
// numbers to integers, which truncates, loses nothing; and integer replies
// cost the caller no allocation each, as strings would.
//
// Microseconds since 1970 stay below 2^53, and checkRate bounds the
// tolerance, so every number is exact in Lua's doubles. A value that is not
// a timestamp (someone else wrote the key) is an error reply before any
// write of a TAT; a key of another type fails with WRONGTYPE, also before.
// No redis.replicate_commands(): scripts replicate their effects since
// Redis 5 (Valkey too), and TIME before a write is allowed.
const gcraScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local units = tonumber(ARGV[1])
local slots = tonumber(ARGV[2])
local n = #KEYS
local free = 0
local slotOK = true
if slots > 0 then
  n = n - 1
  redis.call('ZREMRANGEBYSCORE', KEYS[n+1], '-inf', now / 1000)
  -- A lease never runs more than one lease ahead, unless the clock
  -- stepped back: such a lease would hold its slot for the length of the
  -- step.
  redis.call('ZREMRANGEBYSCORE', KEYS[n+1], '(' .. string.format('%.3f', now / 1000 + tonumber(ARGV[3])), '+inf')
  local used = redis.call('ZCARD', KEYS[n+1])
  if used >= slots then slotOK = false end
  free = slots - used
end
local tats = {}
local ok = true
for i = 1, n do
  local iv, tol, cap = tonumber(ARGV[3*i+2]), tonumber(ARGV[3*i+3]), tonumber(ARGV[3*i+4])
  local tat = now
  local v = redis.call('GET', KEYS[i])
  if v then
    local x = tonumber(v)
    if not x or not (x > -1e16 and x < 1e16) then
      return redis.error_reply('ERR throttle: ' .. KEYS[i] .. ' does not hold a timestamp')
    end
    tat = math.max(x, now)
    if tat > now + cap then
      -- Beyond what the rates could have produced (a clock stepped
      -- back): keep the bound, so that the client waits no longer.
      tat = now + cap
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil(cap / 1000))
    end -- clamped
  end
  if tat + units * iv - now > tol then ok = false end
  tats[i] = tat
end
local flag = 1
if not ok then flag = 0 elseif not slotOK then flag = 2 end
if flag == 1 and slots > 0 then free = free - 1 end
if free < 0 then free = 0 end
local out = {flag, free}
for i = 1, n do
  local tat = tats[i]
  if flag == 1 then
    tat = tat + units * tonumber(ARGV[3*i+2])
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
  end
  out[i+2] = math.floor(tat - now + 0.5)
end
if flag == 1 and slots > 0 then
  redis.call('ZADD', KEYS[n+1], math.floor(now / 1000) + tonumber(ARGV[3]), ARGV[4])
  redis.call('PEXPIRE', KEYS[n+1], ARGV[3])
end
return out
`

// finishScript gives back a request's lease and settles its cost, on
// Redis's clock. KEYS[i] are the rate keys, then the lease set when ARGV[2]
// (the lease) is not empty; ARGV[1] is the difference in units between the
// reported and the up-front cost (charged when positive, given back when
// negative), then per rate its interval and cap as in gcraScript. A TAT
// never moves back past now (a bucket is never fuller than full) nor forward
// past now + cap (the debt a key may owe).
const finishScript = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = tonumber(ARGV[1])
local n = #KEYS
if ARGV[2] ~= '' then
  n = n - 1
  redis.call('ZREM', KEYS[n+1], ARGV[2])
end
if delta ~= 0 then
  for i = 1, n do
    local iv, cap = tonumber(ARGV[2*i+1]), tonumber(ARGV[2*i+2])
    local tat = now
    local v = redis.call('GET', KEYS[i])
    if v then
      local x = tonumber(v)
      if not x or not (x > -1e16 and x < 1e16) then
        return redis.error_reply('ERR throttle: ' .. KEYS[i] .. ' does not hold a timestamp')
      end
      tat = math.min(math.max(x, now), now + cap)
    end
    local d = delta
    local bound = math.floor(cap / iv) + 1
    if d > bound then d = bound elseif d < -bound then d = -bound end
    tat = math.min(math.max(tat + d * iv, now), now + cap)
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
    else
      redis.call('DEL', KEYS[i])
    end -- written
  end -- rates
end -- delta
return 1
`

// renewScript renews leases: KEYS[1] is a lease set, ARGV[1] the lease in
// milliseconds, ARGV[2...] the leases, renewed only while they exist (one
// that expired was given up, and may have been taken by another request).
// It replies with how many it renewed.
const renewScript = `
local t = redis.call('TIME')
local exp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local kept = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', exp, ARGV[i])
    kept = kept + 1
  end -- alive
end -- leases
if kept > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return kept
`

var (
	finishLua = rueidis.NewLuaScript(finishScript)
	renewLua  = rueidis.NewLuaScript(renewScript)
)

var gcraLua = rueidis.NewLuaScript(gcraScript)

// redisLimit is a rate in the script's terms: microseconds, the interval
// rounded up so that rounding never admits more than the rate.
type redisLimit struct {
	limit        // the same rate in nanoseconds, for verdicts
	intervalUS   int64
	toleranceUS  int64
	suffix       string // ":<interval µs>x<burst>": state is never read under another rate
	argI, argTol string
	capUS        int64 // how far a TAT may run ahead of now: tolerance, or 2 × with cost_header
	argCap       string
}

// newRedisLimit converts a valid rate; debt allows the TAT one more burst
// ahead (cost_header).
func newRedisLimit(r Rate, debt bool) redisLimit {
	ivUS := (interval(r) + 999) / 1000
	tolUS := ivUS * int64(r.Burst)
	capUS := tolUS
	if debt {
		capUS = 2 * tolUS
	}
	return redisLimit{
		capUS:       capUS,
		argCap:      strconv.FormatInt(capUS, 10),
		limit:       limit{interval: ivUS * 1000, tolerance: tolUS * 1000},
		intervalUS:  ivUS,
		toleranceUS: tolUS,
		suffix:      ":" + strconv.FormatInt(ivUS, 10) + "x" + strconv.Itoa(r.Burst),
		argI:        strconv.FormatInt(ivUS, 10),
		argTol:      strconv.FormatInt(tolUS, 10),
	}
}
