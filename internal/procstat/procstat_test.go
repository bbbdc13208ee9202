package procstat

import (
	"os"
	"path/filepath"
	"testing"
)

// TestIOCountsThisProcess reads this process's own /proc/<pid>/io around
// writes it makes.
func TestIOCountsThisProcess(t *testing.T) {
	before, err := IO(os.Getpid())
	if err != nil {
		t.Skip("no /proc/<pid>/io here:", err)
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "w"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range 10 {
		if _, err := f.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	after, err := IO(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(before).Writes; d < 10 {
		t.Errorf("10 writes counted as %d", d)
	}
}
