package publish

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// LockFile is the name of the lock inside the chroot root. Its leading dot
// keeps it from ever being taken for a host (host names start with a
// letter or digit).
const LockFile = ".bento-deploy.lock"

// ErrLocked is returned (wrapped) when another deploy holds the lock.
var ErrLocked = errors.New("another bento deploy is running")

// Lock is the exclusive right to change a chroot root. It is a flock(2) on
// <root>/.bento-deploy.lock: the kernel drops it when the process dies, so
// a crashed deploy never leaves a stale lock behind.
type Lock struct {
	f *os.File
}

// AcquireLock takes the lock on root, waiting up to wait (0: fail at once).
// Taking it writes nothing once the lock file exists.
func AcquireLock(ctx context.Context, root string, wait time.Duration) (*Lock, error) {
	p := filepath.Join(root, LockFile)
	f, err := os.OpenFile(p, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	deadline := time.Now().Add(wait)
	delay := 10 * time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return &Lock{f: f}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		if wait <= 0 || time.Now().After(deadline) {
			f.Close()
			hint := "pass --lock-wait 10m to wait for it"
			if wait > 0 {
				hint = fmt.Sprintf("waited %s; pass a longer --lock-wait", wait)
			}
			return nil, fmt.Errorf("%w on %s (it holds %s; `fuser -v %s` shows which process): %s", ErrLocked, root, p, p, hint)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for the deploy lock on %s: %w", root, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 500*time.Millisecond)
	}
}

// Release drops the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
