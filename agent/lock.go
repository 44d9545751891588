package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/internal/flock"
)

// stateLock is the flock on <stateDir>/lock that makes ticks run one at a
// time. The kernel drops it when the process dies, so kill -9 never leaves
// a stale lock behind. The file holds the holder's pid, for messages.
type stateLock struct{ l *flock.Lock }

// acquireLock takes the lock, waiting for a tick that holds it (at most
// wait, when positive; else as long as ctx allows). It says once on out
// that it waits.
func acquireLock(ctx context.Context, dir string, wait time.Duration, out io.Writer) (*stateLock, error) {
	path := filepath.Join(dir, lockFile)
	l, err := flock.Acquire(ctx, path, flock.Options{
		Timeout:  max(wait, 0),
		WritePID: true,
		OnWait: func() {
			if out != nil {
				fmt.Fprintf(out, "bento: another tick is running (%s); waiting for it\n", flock.Holder(path))
			}
		},
	})
	if errors.Is(err, flock.ErrHeld) || err != nil && ctx.Err() != nil {
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		return nil, fmt.Errorf("another tick holds %s (%s) and did not finish in time: %w", path, flock.Holder(path), cause)
	}
	if err != nil {
		return nil, err
	}
	return &stateLock{l: l}, nil
}

func (s *stateLock) release() {
	if s != nil {
		s.l.Release()
	}
}
