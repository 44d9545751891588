package publish

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/internal/flock"
)

// LockFile is the name of the lock inside the chroot root. Its leading dot
// keeps it from ever being taken for a host (host names start with a
// letter or digit).
const LockFile = ".bento-deploy.lock"

// ErrLocked is returned (wrapped) when another deploy holds the lock.
var ErrLocked = errors.New("another bento deploy is running")

// Lock is the exclusive right to change a chroot root: a flock on
// <root>/.bento-deploy.lock, which the kernel drops when the process dies,
// so a crashed deploy never leaves a stale lock behind.
type Lock = flock.Lock

// AcquireLock takes the lock on root, waiting up to wait (0: fail at once).
// Taking it writes nothing once the lock file exists.
func AcquireLock(ctx context.Context, root string, wait time.Duration) (*Lock, error) {
	p := filepath.Join(root, LockFile)
	l, err := flock.Acquire(ctx, p, flock.Options{NoWait: wait <= 0, Timeout: max(wait, 0)})
	switch {
	case errors.Is(err, flock.ErrHeld):
		hint := "pass --lock-wait 10m to wait for it"
		if wait > 0 {
			hint = fmt.Sprintf("waited %s; pass a longer --lock-wait", wait)
		}
		return nil, fmt.Errorf("%w on %s (it holds %s; `fuser -v %s` shows which process): %s", ErrLocked, root, p, p, hint)
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("waiting for the deploy lock on %s: %w", root, ctx.Err())
	case err != nil:
		return nil, err
	}
	return l, nil
}
