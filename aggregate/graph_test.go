package aggregate

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestDependencies(t *testing.T) {
	names := []string{"user", "user.org", "orders", "plan"}
	deps, err := dependencies(names, [][]string{
		nil,
		{"backends.user.id"},
		{"backends.user.id", "backends.user.name", "backends.user.org.id"}, // user.org is the longer name
		{"backends.orders.0.id", "backends.user"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(deps[2], []int{0, 1}) || !slices.Equal(deps[3], []int{2, 0}) || len(deps[0]) != 0 {
		t.Fatalf("deps %v", deps)
	}
	for _, tc := range []struct {
		keys [][]string
		want string
	}{
		{[][]string{nil, nil, {"backends.nobody.id"}, nil}, `backend "orders": {backends.nobody.id}: unknown backend "nobody"`},
		{[][]string{{"backends.user.id"}, nil, nil, nil}, `backend "user": {backends.user.id}: a backend cannot use its own response`},
		{[][]string{{"backends.plan.x"}, nil, {"backends.user.x"}, {"backends.orders.x"}}, `dependency cycle "user" -> "plan" -> "orders" -> "user"`},
		{[][]string{nil, nil, {"backends.user..x"}, nil}, `empty field segment`},
	} {
		_, err := dependencies(names, tc.keys)
		var ge *graphError
		if !errors.As(err, &ge) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.keys, err, tc.want)
		}
	}
}

func TestDepValue(t *testing.T) {
	doc := []byte(`{"s":"a/b","n":12345678901234567890,"f":-1.5e3,"t":true,"z":null,"o":{"k":"v"},"a":[{"id":7}],"e":""}`)
	for field, want := range map[string]string{"s": "a/b", "n": "12345678901234567890", "f": "-1.5e3", "t": "true", "o.k": "v", "a.0.id": "7", "e": ""} {
		got, err := depValue(doc, strings.Split(field, "."))
		if err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", field, got, err, want)
		}
	}
	for _, field := range []string{"z", "o", "a", "missing", "a.5", "s.x"} {
		if _, err := depValue(doc, strings.Split(field, ".")); !errors.Is(err, errDependency) {
			t.Errorf("%s: %v, want a dependency error", field, err)
		}
	}
	if v, err := depValue([]byte(`"whole"`), nil); err != nil || v != "whole" {
		t.Errorf("whole value: %q %v", v, err)
	}
}

// A backend that depends, directly or down a chain, on an identity-derived
// one is identity-derived too.
func TestPrivacyPropagatesAlongTheChain(t *testing.T) {
	h := provisioned(t, &Handler{Backends: []*Backend{
		{Name: "c", URL: "http://127.0.0.1:9/c/{backends.b.id}"},
		{Name: "b", URL: "http://127.0.0.1:9/b/{backends.a.id}"},
		{Name: "a", URL: "http://127.0.0.1:9/a/{http.auth.user.id}"},
		{Name: "free", URL: "http://127.0.0.1:9/free/{http.request.uri.query.id}"},
	}})
	for i, want := range []bool{true, true, true, false} {
		if h.Backends[i].private != want {
			t.Errorf("%s: private %v, want %v", h.Backends[i].Name, h.Backends[i].private, want)
		}
	}
}
