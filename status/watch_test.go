package status

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// waitFor is how long a test waits for a redraw before it fails; it is a
// deadline for a hang, not a measurement.
const waitFor = 20 * time.Second

type drawn struct {
	s   *Snapshot
	err error
}

// startWatch runs Watch in the background and returns its draws.
func startWatch(t *testing.T, o Options, every time.Duration, clock func() time.Time) (<-chan drawn, context.CancelFunc, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	draws := make(chan drawn, 100)
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, o, every, clock, func(s *Snapshot, err error) error {
			select {
			case draws <- drawn{s, err}:
			case <-ctx.Done():
			}
			return nil
		})
	}()
	wait := sync.OnceValue(func() error { return <-done })
	t.Cleanup(func() { cancel(); wait() })
	return draws, cancel, wait
}

// next waits for a draw that satisfies ok.
func next(t *testing.T, draws <-chan drawn, what string, ok func(drawn) bool) drawn {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case d := <-draws:
			if ok(d) {
				return d
			}
		case <-deadline:
			t.Fatalf("no redraw showing %s", what)
		}
	}
}

// replace writes a report the way the agent does: temporary name, rename.
func replace(t *testing.T, root, host string, r manifest.Report) {
	t.Helper()
	r.Format, r.Host = manifest.Format, host
	data, _ := json.Marshal(r)
	tmp := filepath.Join(root, host, manifest.ReportsDir, ".status.json.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(root, host, manifest.StatusFile)); err != nil {
		t.Fatal(err)
	}
}

// TestWatchRedrawsOnReportChange uses an hour-long period, so only the
// file event can cause the second draw.
func TestWatchRedrawsOnReportChange(t *testing.T) {
	c := newChroot(t)
	c.publish("alpha", v2, now.Add(-time.Hour), sysB)
	c.report("alpha", applied(v1, sysA, now.Add(-time.Minute)))
	draws, cancel, done := startWatch(t, Options{Root: c.root}, time.Hour, func() time.Time { return now })
	next(t, draws, "pending", func(d drawn) bool { return d.s != nil && d.s.Hosts[0].State == Pending })
	replace(t, c.root, "alpha", applied(v2, sysB, now))
	next(t, draws, "up-to-date after the report changed", func(d drawn) bool { return d.s != nil && d.s.Hosts[0].State == UpToDate })
	// A host published after the watch started is watched too.
	c.publish("beta", v1, now, sysA)
	next(t, draws, "the new host", func(d drawn) bool { return d.s != nil && len(d.s.Hosts) == 2 })
	replace(t, c.root, "beta", applied(v1, sysA, now))
	next(t, draws, "the new host up to date", func(d drawn) bool {
		return d.s != nil && len(d.s.Hosts) == 2 && d.s.Summary.States[UpToDate] == 2
	})
	cancel()
	if err := done(); err != nil {
		t.Fatalf("Watch returned %v after cancel, want nil (a clean Ctrl-C)", err)
	}
}

// TestWatchKeepsAgesTrue: with nothing changing on disk, periodic redraws
// follow the clock, so a host turns stale on screen.
func TestWatchKeepsAgesTrue(t *testing.T) {
	c := newChroot(t)
	c.publish("alpha", v1, now.Add(-time.Hour), sysA)
	c.report("alpha", applied(v1, sysA, now.Add(-time.Minute)))
	var ticks atomic.Int64
	clock := func() time.Time { return now.Add(time.Duration(ticks.Add(1)) * 10 * time.Minute) }
	draws, _, _ := startWatch(t, Options{Root: c.root}, 10*time.Millisecond, clock)
	next(t, draws, "up-to-date", func(d drawn) bool { return d.s != nil && d.s.Hosts[0].State == UpToDate })
	next(t, draws, "stale once the clock passed 45m", func(d drawn) bool { return d.s != nil && d.s.Hosts[0].State == Stale })
}

// TestWatchMissingAndEmptyRoot: a missing root is drawn as an error and
// watched until it appears; an empty root is drawn as no hosts.
func TestWatchMissingAndEmptyRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "chroot")
	draws, _, _ := startWatch(t, Options{Root: root}, 20*time.Millisecond, func() time.Time { return now })
	next(t, draws, "the missing root", func(d drawn) bool { return errors.Is(d.err, ErrNoRoot) })
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	next(t, draws, "an empty root", func(d drawn) bool { return d.err == nil && d.s != nil && len(d.s.Hosts) == 0 })
	c := chroot{t, root}
	c.publish("alpha", v1, now, sysA)
	next(t, draws, "the first host", func(d drawn) bool { return d.s != nil && len(d.s.Hosts) == 1 && d.s.Hosts[0].State == NeverSeen })
}

func TestWatchBadSelectionStops(t *testing.T) {
	err := Watch(context.Background(), Options{Root: t.TempDir(), Select: []string{"nope"}}, time.Second, time.Now, func(*Snapshot, error) error { return nil })
	var ue *UsageError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v, want a usage error", err)
	}
}
