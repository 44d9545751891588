package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/internal/flock"
	"github.com/bento-nix/bento/internal/timespan"
)

// stateLock is the flock on <stateDir>/lock that makes ticks run one at a
// time. The kernel drops it when the process dies, so kill -9 never leaves
// a stale lock behind. The file holds the holder's pid, for messages.
type stateLock struct{ l *flock.Lock }

// acquireLock takes the lock, waiting for a tick that holds it (at most
// wait, when positive; not at all when negative; else as long as ctx
// allows). It says once on out that it waits, and only when it does.
func acquireLock(ctx context.Context, dir string, wait time.Duration, out io.Writer) (*stateLock, error) {
	path := filepath.Join(dir, lockFile)
	dontWait := wait < 0
	l, err := flock.Acquire(ctx, path, flock.Options{
		Timeout:  max(wait, 0),
		NoWait:   dontWait,
		WritePID: true,
		OnWait:   sayWaiting(out, path, wait),
	})
	if err != nil {
		return nil, lockError(ctx, path, dontWait, err)
	}
	return &stateLock{l: l}, nil
}

// sayWaiting is the lock's OnWait: it says on out (when set) that the
// tick waits for the one holding path.
func sayWaiting(out io.Writer, path string, wait time.Duration) func() {
	return func() {
		if out == nil {
			return
		}
		if wait > 0 {
			fmt.Fprintf(out, "bento: another tick is running (%s); waiting up to %s for it\n", flock.Holder(path), timespan.Human(wait))
		} else {
			fmt.Fprintf(out, "bento: another tick is running (%s); waiting for it\n", flock.Holder(path))
		}
	}
}

// lockError explains why the lock on path was not taken: another tick
// holds it (and no wait was asked for, or the wait ran out), or err.
func lockError(ctx context.Context, path string, dontWait bool, err error) error {
	if dontWait && errors.Is(err, flock.ErrHeld) {
		return fmt.Errorf("another tick holds %s (%s), and --lock-wait 0 does not wait for it: run again when that tick is done, or give --lock-wait 5m: %w", path, flock.Holder(path), err)
	}
	if errors.Is(err, flock.ErrHeld) || ctx.Err() != nil {
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return fmt.Errorf("another tick holds %s (%s) and did not finish in time: %w", path, flock.Holder(path), cause)
	}
	return err
}

func (s *stateLock) release() {
	if s != nil {
		s.l.Release()
	}
}
