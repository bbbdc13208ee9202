// Package registry holds the small live-state registries that the admin API
// (admin.api.gateway) reads. Admin modules are provisioned fresh with the
// admin server and never see handler instances, so handlers join a registry
// at Provision and leave it at Cleanup: a reload never leaves a stale entry
// visible and never leaks one.
package registry

import "sync"

// Set is a concurrency-safe set of live members (typically *Handler or a
// zone's shared state). A member joined n times stays until it has left n
// times, so state shared by several handlers (a zone) is listed once and
// stays while any of them is live.
type Set[T comparable] struct {
	mu sync.RWMutex
	m  map[T]int
}

// Join adds v (or counts one more holder of it).
func (s *Set[T]) Join(v T) {
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[T]int)
	}
	s.m[v]++
	s.mu.Unlock()
}

// Leave drops one holder of v; v is removed when none is left. Leaving a
// member that never joined does nothing.
func (s *Set[T]) Leave(v T) {
	s.mu.Lock()
	if n, ok := s.m[v]; ok {
		if n <= 1 {
			delete(s.m, v)
		} else {
			s.m[v] = n - 1
		}
	}
	s.mu.Unlock()
}

// Members returns a snapshot of the live members, in no particular order.
func (s *Set[T]) Members() []T {
	s.mu.RLock()
	out := make([]T, 0, len(s.m))
	for v := range s.m {
		out = append(out, v)
	}
	s.mu.RUnlock()
	return out
}

// Len is the number of distinct live members.
func (s *Set[T]) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.m)
}
