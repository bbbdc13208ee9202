package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterTwiceIsFine(t *testing.T) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"})
	reg := prometheus.NewRegistry()
	if err := Register(reg, c); err != nil {
		t.Fatal(err)
	}
	if err := Register(reg, c); err != nil {
		t.Fatalf("second registration: %v", err)
	}
	other := prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "another help text"})
	if err := Register(reg, other); err == nil {
		t.Fatal("a different collector under the same name was accepted")
	}
	if err := Register(nil, c); err != nil {
		t.Fatal(err)
	}
}
