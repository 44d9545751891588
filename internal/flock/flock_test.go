package flock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Locks taken through different open files conflict as between
// processes: flock(2) belongs to the open file, not the process.
func TestConflicts(t *testing.T) {
	tests := []struct {
		name      string
		held      Options
		want      Options
		wantErr   error
		alsoErr   error
		minWait   time.Duration
		wantTold  bool
		cancelled bool
	}{
		{name: "exclusive, no wait", want: Options{NoWait: true}, wantErr: ErrHeld},
		{name: "exclusive, timeout", want: Options{Timeout: 100 * time.Millisecond}, wantErr: ErrHeld, alsoErr: context.DeadlineExceeded, minWait: 100 * time.Millisecond, wantTold: true},
		{name: "exclusive, cancelled", want: Options{}, wantErr: context.Canceled, cancelled: true, wantTold: true},
		{name: "shared beside shared", held: Options{Shared: true}, want: Options{Shared: true, NoWait: true}},
		{name: "exclusive beside shared", held: Options{Shared: true}, want: Options{NoWait: true}, wantErr: ErrHeld},
		{name: "shared beside exclusive", want: Options{Shared: true, NoWait: true}, wantErr: ErrHeld},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "lock")
			held, err := Acquire(context.Background(), path, tc.held)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Release()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			told := 0
			o := tc.want
			o.OnWait = func() {
				told++
				if tc.cancelled {
					cancel()
				}
			}
			start := time.Now()
			l, err := Acquire(ctx, path, o)
			took := time.Since(start)
			defer l.Release()
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if tc.alsoErr != nil && !errors.Is(err, tc.alsoErr) {
				t.Errorf("error %v, want it to wrap %v too", err, tc.alsoErr)
			}
			if tc.wantErr != nil && (l != nil || !strings.Contains(err.Error(), path)) {
				t.Errorf("failed lock %v, error %q: want no lock and the path named", l, err)
			}
			if took < tc.minWait {
				t.Errorf("gave up after %s, before %s", took, tc.minWait)
			}
			if want := map[bool]int{true: 1}[tc.wantTold]; told != want {
				t.Errorf("OnWait called %d times, want %d", told, want)
			}
		})
	}
}

// A waiter gets the lock once the holder releases it.
func TestWaitsForRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	held, err := Acquire(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		l, err := Acquire(context.Background(), path, Options{OnWait: func() { close(waiting) }})
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	<-waiting
	select {
	case err := <-got:
		t.Fatalf("took the lock while it was held: %v", err)
	default:
	}
	if err := held.Release(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("after release: %v", err)
	}
	if err := held.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	var none *Lock
	if err := none.Release(); err != nil {
		t.Errorf("nil Release: %v", err)
	}
}

func TestPIDAndHolder(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lock")
	if err := os.WriteFile(path, []byte("a much longer previous content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Acquire(context.Background(), path, Options{WritePID: true})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	data, _ := os.ReadFile(path)
	if string(data) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q, want our pid", data)
	}
	for _, tc := range []struct{ content, want string }{
		{"4242\n", "pid 4242"},
		{"", "pid unknown"},
		{"\x1b[31mevil\n", "pid unknown"},
		{strings.Repeat("9", 100), "pid unknown"},
	} {
		p := filepath.Join(dir, "other")
		os.WriteFile(p, []byte(tc.content), 0o644)
		if got := Holder(p); got != tc.want {
			t.Errorf("Holder(%q) = %q, want %q", tc.content, got, tc.want)
		}
	}
	if got := Holder(filepath.Join(dir, "missing")); got != "pid unknown" {
		t.Errorf("missing file: %q", got)
	}
	// Without WritePID the file is left as it is.
	p := filepath.Join(dir, "quiet")
	os.WriteFile(p, []byte("keep\n"), 0o644)
	l2, err := Acquire(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l2.Release()
	if data, _ := os.ReadFile(p); string(data) != "keep\n" {
		t.Errorf("lock file changed to %q", data)
	}
}

func TestPerm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	l, err := Acquire(context.Background(), path, Options{Perm: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := Acquire(context.Background(), filepath.Join(t.TempDir(), "no", "dir", "lock"), Options{}); err == nil {
		t.Error("a lock in a missing directory: want an error")
	}
}

// The caller's own deadline is not the lock's timeout running out.
func TestCallerDeadlineIsNotHeld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	held, err := Acquire(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = Acquire(ctx, path, Options{Timeout: time.Hour})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrHeld) {
		t.Fatalf("error %v: want the caller's deadline, not ErrHeld", err)
	}
}

// A probe with Existing creates nothing.
func TestExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	if _, err := Acquire(context.Background(), path, Options{Existing: true}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the probe created the lock file")
	}
}
