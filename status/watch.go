package status

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// settle is how long a burst of file events may last before one redraw:
// a deploy renames hundreds of manifests at once.
const settle = 150 * time.Millisecond

// Watch draws the status now, again whenever a manifest or report changes
// (fsnotify on the root, each host's directory and its reports/), and at
// least every `every` so that ages stay true. It returns nil when ctx is
// done (Ctrl-C), and an error only for bad options or when draw fails.
// A missing or empty root is drawn (with its error) and watched until
// hosts appear.
func Watch(ctx context.Context, o Options, every time.Duration, clock func() time.Time, draw func(*Snapshot, error) error) error {
	return WatchWith(ctx, o, every, clock, nil, draw)
}

// WatchWith is Watch that also redraws at once on each value from redraw
// (a terminal resized: SIGWINCH); nil never fires.
func WatchWith(ctx context.Context, o Options, every time.Duration, clock func() time.Time, redrawNow <-chan struct{}, draw func(*Snapshot, error) error) error {
	if every <= 0 {
		return &UsageError{fmt.Errorf("watch: the redraw interval must be positive, not %s", every)}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", o.Root, err)
	}
	defer w.Close()

	redraw := func() error { return redraw(ctx, w, o, clock, draw) }
	if err := redraw(); err != nil {
		return err
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	// pending is a redraw soon after a burst of events.
	var pending <-chan time.Time
	for {
		switch nextWakeup(ctx, w, ticker.C, redrawNow, pending) {
		case wakeStop:
			return nil
		case wakeEvent:
			if pending == nil {
				pending = time.After(settle)
			}
			continue
		}
		pending = nil
		if err := redraw(); err != nil {
			return err
		}
	}
}

// wakeup is why the watch stopped waiting.
type wakeup int

const (
	wakeRedraw wakeup = iota // time to draw again
	wakeEvent                // a change: draw once the burst settles
	wakeStop                 // ctx is done or the watcher closed
)

// nextWakeup waits for the next reason to redraw: the periodic tick, a
// redraw asked for, a burst of events settled (pending) or a new event.
func nextWakeup(ctx context.Context, w *fsnotify.Watcher, tick <-chan time.Time, redrawNow <-chan struct{}, pending <-chan time.Time) wakeup {
	select {
	case <-ctx.Done():
		return wakeStop
	case <-tick:
	case <-redrawNow:
	case <-pending:
	case _, ok := <-w.Events:
		return eventWakeup(ok)
	case _, ok := <-w.Errors:
		// An overflowed event queue loses events, not changes: redraw
		// soon, and the periodic redraw covers the rest.
		return eventWakeup(ok)
	}
	return wakeRedraw
}

// eventWakeup is an event's wakeup, or wakeStop once the watcher's
// channel is closed.
func eventWakeup(open bool) wakeup {
	if !open {
		return wakeStop
	}
	return wakeEvent
}

// redraw collects the status and draws it (or the error that stopped the
// collection), after watching any new host directories. A usage error
// stops the watch; a cancelled context draws nothing.
func redraw(ctx context.Context, w *fsnotify.Watcher, o Options, clock func() time.Time, draw func(*Snapshot, error) error) error {
	addWatches(w, o.Root)
	o.Now = clock()
	s, err := Collect(ctx, o)
	if ctx.Err() != nil {
		return nil
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		return err
	}
	return draw(s, err)
}

// addWatches watches the root (new hosts), each host directory (manifest.json
// is replaced by rename) and each reports/ (status.json likewise). Paths
// already watched are skipped; vanished ones drop out of the watcher by
// themselves. Failures are ignored: the periodic redraw still shows changes.
func addWatches(w *fsnotify.Watcher, root string) {
	have := map[string]bool{}
	for _, p := range w.WatchList() {
		have[p] = true
	}
	add := func(p string) {
		if have[p] {
			return
		}
		// Never follow a symlink the host planted in its reports/.
		if st, err := os.Lstat(p); err != nil || !st.IsDir() {
			return
		}
		if w.Add(p) == nil {
			have[p] = true
		}
	}
	add(root)
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || fleet.ValidateName(e.Name()) != nil {
			continue
		}
		dir := filepath.Join(root, e.Name())
		add(dir)
		add(filepath.Join(dir, manifest.ReportsDir))
	}
}
