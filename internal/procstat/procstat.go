// Package procstat reads what Linux counts of a process in /proc, for the
// load tool and the benchmarks: how many read and write system calls it
// made, which is where a network round trip's CPU goes.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// IOStats counts a process's read and write system calls.
type IOStats struct{ Reads, Writes int64 }

// Sub returns the calls made between before and s.
func (s IOStats) Sub(before IOStats) IOStats {
	return IOStats{Reads: s.Reads - before.Reads, Writes: s.Writes - before.Writes}
}

// IO reads the system calls of process pid that read and write
// (/proc/<pid>/io syscr and syscw: read(2), write(2) and their kin).
func IO(pid int) (IOStats, error) {
	var st IOStats
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return st, err
	}
	var seen int
	for line := range strings.Lines(string(data)) {
		name, v, _ := strings.Cut(strings.TrimSpace(line), ": ")
		var dst *int64
		switch name {
		case "syscr":
			dst = &st.Reads
		case "syscw":
			dst = &st.Writes
		default:
			continue
		}
		if *dst, err = strconv.ParseInt(v, 10, 64); err != nil {
			return st, fmt.Errorf("/proc/%d/io: %s: %w", pid, name, err)
		}
		seen++
	}
	if seen != 2 {
		return st, fmt.Errorf("/proc/%d/io has no syscr and syscw: %q", pid, data)
	}
	return st, nil
}
