package atomicfile_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bento-nix/bento/internal/atomicfile"
)

func TestWriteFileReplacesWithMode(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "status.json")
	for _, tc := range []struct {
		data string
		perm os.FileMode
	}{{"old", 0o600}, {"new content", 0o644}} {
		if err := atomicfile.WriteFile(p, []byte(tc.data), tc.perm); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if string(got) != tc.data || fi.Mode().Perm() != tc.perm {
			t.Errorf("got %q %v, want %q %v", got, fi.Mode().Perm(), tc.data, tc.perm)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestFailedWriteKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := atomicfile.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := atomicfile.Write(p, 0o644, func(w io.Writer) error {
		io.WriteString(w, "half")
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v: want boom, naming the file", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "old" {
		t.Errorf("old content lost: %q", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

// A reader racing with writers only ever sees whole versions.
func TestConcurrentReadersSeeWholeFiles(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	a, b := strings.Repeat("a", 1<<16), strings.Repeat("b", 1<<16)
	if err := atomicfile.WriteFile(p, []byte(a), 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			data := a
			if i%2 == 1 {
				data = b
			}
			if err := atomicfile.WriteFile(p, []byte(data), 0o644); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for range 2000 {
		got, err := os.ReadFile(p)
		if err != nil || (string(got) != a && string(got) != b) {
			t.Fatalf("torn read: %d bytes, %v", len(got), err)
		}
	}
	wg.Wait()
}
