package ratelimit

// table is an open-addressing hash table from 64-bit key hashes to TATs,
// with linear probing: a lookup touches one or two cache lines, and nothing
// is allocated except when the table grows. It is not safe for concurrent
// use; a shard guards it with its mutex.
//
// Keys are already uniform hashes, so their low bits index the slots. Key 0
// marks an empty slot; a hash of 0 is stored as 1.
type table struct {
	slots []slot // len is a power of two, or 0
	n     int
}

type slot struct {
	k   uint64
	tat int64
}

const minTableSize = 16

func fixKey(k uint64) uint64 {
	if k == 0 {
		return 1
	}
	return k
}

// get returns the TAT of k.
func (t *table) get(k uint64) (int64, bool) {
	if t.n == 0 {
		return 0, false
	}
	k = fixKey(k)
	mask := len(t.slots) - 1
	for i := int(k) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.k == k {
			return s.tat, true
		}
		if s.k == 0 {
			return 0, false
		}
	}
}

// set stores the TAT of k, inserting k when absent. The load factor stays at
// most 3/4, so probes always end.
func (t *table) set(k uint64, tat int64) {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.grow()
	}
	k = fixKey(k)
	mask := len(t.slots) - 1
	for i := int(k) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.k == k {
			s.tat = tat
			return
		}
		if s.k == 0 {
			*s = slot{k: k, tat: tat}
			t.n++
			return
		}
	}
}

func (t *table) grow() {
	old := t.slots
	t.slots = make([]slot, max(2*len(old), minTableSize))
	t.n = 0
	mask := len(t.slots) - 1
	for _, s := range old {
		if s.k == 0 {
			continue
		}
		i := int(s.k) & mask
		for t.slots[i].k != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
		t.n++
	}
}

// deleteAt empties slot i, shifting later entries of its probe run back so
// that no lookup is cut short (no tombstones).
func (t *table) deleteAt(i int) {
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].k != 0; j = (j + 1) & mask {
		home := int(t.slots[j].k) & mask
		// The entry at j may move to i unless its home lies cyclically
		// in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = slot{}
	t.n--
}

// sweep deletes the entries whose TAT is not after now and returns the
// smallest TAT left (MaxInt64 when none is).
func (t *table) sweep(now int64) int64 {
	next := int64(1<<63 - 1)
	for i := 0; i < len(t.slots); {
		s := &t.slots[i]
		if s.k != 0 && s.tat <= now {
			t.deleteAt(i) // slot i may now hold a shifted entry: look again
			continue
		}
		if s.k != 0 && s.tat < next {
			next = s.tat
		}
		i++
	}
	return next
}
