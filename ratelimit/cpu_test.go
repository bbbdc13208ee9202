package ratelimit

import (
	"syscall"
	"testing"
	"time"
)

// cpuPerOp reports the process CPU time per operation (cpu-ns/op) beside
// the wall time: on a shared machine wall time counts the time other
// processes run, CPU time only ours. Call it right after b.ResetTimer and
// defer the function it returns.
func cpuPerOp(b *testing.B) func() {
	b.Helper()
	start := cpuTime()
	return func() {
		b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
