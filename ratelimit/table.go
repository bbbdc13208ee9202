package ratelimit

// table holds the keys of one shard: an open-addressing hash table from
// 64-bit key hashes to the TATs of the key's rates, with linear probing (a
// lookup touches one or two cache lines), and the order in which keys become
// idle (their largest TAT), which says which key goes first when room is
// needed. It is not safe for concurrent use; a shard guards it with its
// mutex. Nothing is allocated except when it grows.
//
// Keys are already uniform hashes, so their low bits index the slots. Key 0
// marks an empty slot; a hash of 0 is stored as 1.
//
// The order is lazy: a request that moves a key's TATs leaves it alone, so
// a key's entry may say it becomes idle earlier than it does (TATs only
// grow). Every key has exactly one entry, in one of two places: a queue in
// insertion order, where a new key goes (all keys of a zone have the same
// rates, so new keys become idle in the order they arrive, and a flood of
// new keys costs no sorting), and a min-heap for the rest. The least entry
// of the two is checked against the table: when stale it goes back with the
// key's real idle time; the first fresh one is the key closest to idle.
// Keys leave the table only through this order.
type table struct {
	rates  int     // TATs per key
	stride int     // words per slot: the key, then its TATs
	words  []int64 // slots; len is a power of two times stride, or 0
	mask   int     // slots - 1
	n      int     // keys held
	queue  ring    // entries in non-decreasing idle order
	heap   []entry // a min-heap by idle

	touched int64 // keeps touchNext's load from being optimized away
}

// entry places a key in the idle order.
type entry struct {
	idle int64  // when the key becomes idle, as of the entry's last check
	k    uint64 // the key (fixed)
}

const minTableSize = 16

func newTable(rates int) table {
	return table{rates: rates, stride: 1 + rates}
}

func fixKey(k uint64) uint64 {
	if k == 0 {
		return 1
	}
	return k
}

// find returns the slot of k.
func (t *table) find(k uint64) (int, bool) {
	if t.n == 0 {
		return 0, false
	}
	k = fixKey(k)
	for i := int(k) & t.mask; ; i = (i + 1) & t.mask {
		switch uint64(t.words[i*t.stride]) {
		case k:
			return i, true
		case 0:
			return 0, false
		}
	}
}

// tats returns the TATs of the key in slot i, to read or write. The slice is
// valid until the table changes shape (insert, delete).
func (t *table) tats(i int) []int64 {
	o := i*t.stride + 1
	return t.words[o : o+t.rates : o+t.rates]
}

// idleAt returns when the key in slot i becomes idle: its largest TAT.
func (t *table) idleAt(i int) int64 {
	var m int64
	for _, v := range t.tats(i) {
		m = max(m, v)
	}
	return m
}

// insert adds k, which must be absent, with the given TATs. The load factor
// stays at most 3/4, so probes always end.
func (t *table) insert(k uint64, tats []int64) {
	if t.words == nil || (t.n+1)*4 > (t.mask+1)*3 {
		t.grow()
	}
	k = fixKey(k)
	i := int(k) & t.mask
	for t.words[i*t.stride] != 0 {
		i = (i + 1) & t.mask
	}
	t.words[i*t.stride] = int64(k)
	copy(t.tats(i), tats)
	t.n++
	t.enqueue(entry{idle: t.idleAt(i), k: k})
}

// enqueue places e in the idle order: at the end of the queue when that
// keeps it sorted, else in the heap.
func (t *table) enqueue(e entry) {
	if t.queue.n == 0 || t.queue.back().idle <= e.idle {
		t.queue.push(e)
		return
	}
	t.push(e)
}

// least returns the entry with the smallest idle time and whether it is
// the heap's. The table must not be empty.
func (t *table) least() (entry, bool) {
	if len(t.heap) > 0 && (t.queue.n == 0 || t.heap[0].idle < t.queue.front().idle) {
		return t.heap[0], true
	}
	return *t.queue.front(), false
}

// next finds the key closest to idle and returns its slot and idle time,
// bringing stale entries up to date on the way. The entry stays in place;
// drop removes it. The table must not be empty.
func (t *table) next() (slot int, idle int64, inHeap bool) {
	for {
		e, inHeap := t.least()
		i, ok := t.find(e.k)
		if !ok {
			t.drop(inHeap) // unreachable: keys leave only through the order
			continue
		}
		cur := t.idleAt(i)
		if cur <= e.idle {
			return i, cur, inHeap
		}
		// Stale: put it back where it belongs.
		if inHeap {
			t.heap[0].idle = cur
			t.down(0)
		} else {
			t.queue.pop()
			t.enqueue(entry{idle: cur, k: e.k})
		}
	}
}

// touchNext loads the home slot of the least entry's key.
func (t *table) touchNext() {
	var k uint64
	switch {
	case t.queue.n > 0:
		k = t.queue.front().k
	case len(t.heap) > 0:
		k = t.heap[0].k
	default:
		return
	}
	t.touched = t.words[(int(k)&t.mask)*t.stride]
}

// drop removes the least entry (from the heap or the queue).
func (t *table) drop(inHeap bool) {
	if inHeap {
		t.pop()
	} else {
		t.queue.pop()
	}
}

func (t *table) grow() {
	old, oldStride := t.words, t.stride
	size := max(2*(t.mask+1), minTableSize)
	t.words = make([]int64, size*t.stride)
	t.mask = size - 1
	for o := 0; o < len(old); o += oldStride {
		k := old[o]
		if k == 0 {
			continue
		}
		i := int(k) & t.mask
		for t.words[i*t.stride] != 0 {
			i = (i + 1) & t.mask
		}
		copy(t.words[i*t.stride:(i+1)*t.stride], old[o:o+oldStride])
	}
}

// deleteAt empties slot i, shifting later entries of its probe run back so
// that no lookup is cut short (no tombstones). Only the heap's pops call it.
func (t *table) deleteAt(i int) {
	w, s, mask := t.words, t.stride, t.mask
	for j := (i + 1) & mask; w[j*s] != 0; j = (j + 1) & mask {
		home := int(w[j*s]) & mask
		// The entry at j may move to i unless its home lies cyclically
		// in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			copy(w[i*s:(i+1)*s], w[j*s:(j+1)*s])
			i = j
		}
	}
	clear(w[i*s : (i+1)*s])
	t.n--
}

// evict drops the key closest to idle (an idle one when there is one) and
// returns it as stored. The table must not be empty.
func (t *table) evict() uint64 {
	i, _, inHeap := t.next()
	k := uint64(t.words[i*t.stride])
	t.drop(inHeap)
	t.deleteAt(i)
	return k
}

// sweep drops the keys idle at now.
func (t *table) sweep(now int64) {
	for t.n > 0 {
		i, idle, inHeap := t.next()
		if idle > now {
			return
		}
		t.drop(inHeap)
		t.deleteAt(i)
	}
}

// The heap is 4-ary: the children of a node fill one cache line, and the
// tree is half as deep as a binary one.
const arity = 4

func (t *table) push(e entry) {
	t.heap = append(t.heap, e)
	t.up(len(t.heap) - 1)
}

func (t *table) pop() {
	last := len(t.heap) - 1
	t.heap[0] = t.heap[last]
	t.heap = t.heap[:last]
	if last > 0 {
		t.down(0)
	}
}

func (t *table) up(i int) {
	h := t.heap
	e := h[i]
	for i > 0 {
		p := (i - 1) / arity
		if h[p].idle <= e.idle {
			break
		}
		h[i] = h[p]
		i = p
	}
	h[i] = e
}

func (t *table) down(i int) {
	h := t.heap
	n := len(h)
	e := h[i]
	for {
		c := i*arity + 1
		if c >= n {
			break
		}
		m := c
		for j := c + 1; j < min(c+arity, n); j++ {
			if h[j].idle < h[m].idle {
				m = j
			}
		}
		if h[m].idle >= e.idle {
			break
		}
		h[i] = h[m]
		i = m
	}
	h[i] = e
}

// ring is a FIFO queue of entries in a power-of-two ring buffer.
type ring struct {
	buf  []entry
	head int
	n    int
}

func (r *ring) push(e entry) {
	if r.n == len(r.buf) {
		old := r.buf
		r.buf = make([]entry, max(2*len(old), minTableSize))
		for i := range r.n {
			r.buf[i] = old[(r.head+i)&(len(old)-1)]
		}
		r.head = 0
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = e
	r.n++
}

func (r *ring) front() *entry { return &r.buf[r.head] }

func (r *ring) back() *entry { return &r.buf[(r.head+r.n-1)&(len(r.buf)-1)] }

func (r *ring) pop() {
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
}
