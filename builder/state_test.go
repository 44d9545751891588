package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/flock"
)

// TestKeepPicksPrevious checks which older roots survive a new build:
// the newest one of a different system, whatever came in between.
func TestKeepPicksPrevious(t *testing.T) {
	// Stand-ins for store paths: keep only needs them to exist.
	store := t.TempDir()
	sys := func(name string) string {
		p := filepath.Join(store, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b, c := sys("a"), sys("b"), sys("c")
	gone := filepath.Join(store, "collected")
	for _, tc := range []struct {
		name     string
		old      [][2]string // run, target
		newRun   string
		newOut   string
		wantKept []string
		wantPrev string
	}{
		{"first build", nil, "r3", a, []string{"r3"}, ""},
		{"changed system", [][2]string{{"r1", a}, {"r2", b}}, "r3", c, []string{"r2", "r3"}, b},
		{"unchanged system keeps the one before", [][2]string{{"r1", a}, {"r2", b}}, "r3", b, []string{"r1", "r3"}, a},
		{"only rebuilds of the same system", [][2]string{{"r1", a}, {"r2", a}}, "r3", a, []string{"r3"}, ""},
		{"a vanished path is not kept", [][2]string{{"r1", a}, {"r2", gone}}, "r3", b, []string{"r1", "r3"}, a},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			s, err := openState(root)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(root, GCRootsDir, "alpha")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, o := range append(tc.old, [2]string{tc.newRun, tc.newOut}) {
				if err := os.Symlink(o[1], filepath.Join(dir, o[0])); err != nil {
					t.Fatal(err)
				}
			}
			rec := Record{Host: "alpha", OutPath: tc.newOut, DrvPath: "/nix/store/x.drv"}
			if err := s.keep(context.Background(), rec, filepath.Join(dir, tc.newRun)); err != nil {
				t.Fatal(err)
			}
			entries, _ := os.ReadDir(dir)
			var kept []string
			for _, e := range entries {
				if e.Name() != ".lock" {
					kept = append(kept, e.Name())
				}
			}
			if !slices.Equal(kept, tc.wantKept) {
				t.Errorf("kept %v, want %v", kept, tc.wantKept)
			}
			recs, err := LastBuilds(root)
			if err != nil {
				t.Fatal(err)
			}
			if got := recs["alpha"]; got.OutPath != tc.newOut || got.Previous != tc.wantPrev {
				t.Errorf("record %+v, want out %s previous %q", got, tc.newOut, tc.wantPrev)
			}
		})
	}
}

func TestKeepRefusesAMissingLink(t *testing.T) {
	root := t.TempDir()
	s, err := openState(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, GCRootsDir, "alpha")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err = s.keep(context.Background(), Record{Host: "alpha", OutPath: "/nix/store/a"}, filepath.Join(dir, "r1"))
	if err == nil {
		t.Fatal("keep accepted a build whose out link does not exist")
	}
	if recs, _ := LastBuilds(root); len(recs) != 0 {
		t.Errorf("a record was written: %v", recs)
	}
}

// keep waits for another process rotating the same host's roots, but no
// longer than its context allows.
func TestKeepWaitsForTheLock(t *testing.T) {
	root := t.TempDir()
	s, err := openState(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, GCRootsDir, "alpha")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "system")
	os.MkdirAll(out, 0o755)
	link := filepath.Join(dir, "r1")
	if err := os.Symlink(out, link); err != nil {
		t.Fatal(err)
	}
	other, err := flock.Acquire(context.Background(), filepath.Join(dir, ".lock"), flock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.keep(ctx, Record{Host: "alpha", OutPath: out}, link); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("keep while another holds the lock: %v, want the context's deadline", err)
	}
	other.Release()
	if err := s.keep(context.Background(), Record{Host: "alpha", OutPath: out}, link); err != nil {
		t.Fatal(err)
	}
	if recs, _ := LastBuilds(root); len(recs) != 1 || recs["alpha"].OutPath != out {
		t.Errorf("records %v, want alpha's build", recs)
	}
}

func TestPruneLogs(t *testing.T) {
	dir := t.TempDir()
	var all []string
	for i := range KeepLogs + 5 {
		name := fmt.Sprintf("20240501T1304%02d.000Z.log", i)
		all = append(all, name)
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pruneLogs(dir, KeepLogs)
	entries, _ := os.ReadDir(dir)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if !slices.Equal(left, all[5:]) {
		t.Errorf("left %v, want the %d newest %v", left, KeepLogs, all[5:])
	}
}
