package registry

import "testing"

func TestSetJoinLeaveCounts(t *testing.T) {
	var s Set[string]
	s.Join("a")
	s.Join("a")
	s.Join("b")
	if s.Len() != 2 {
		t.Fatalf("len %d, want 2", s.Len())
	}
	s.Leave("a")
	if s.Len() != 2 {
		t.Fatalf("a left once of twice: len %d, want 2", s.Len())
	}
	s.Leave("a")
	s.Leave("b")
	s.Leave("never")
	if s.Len() != 0 || len(s.Members()) != 0 {
		t.Fatalf("len %d after every leave, want 0", s.Len())
	}
}
