package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stateLock is the flock on <stateDir>/lock that makes ticks run one at a
// time. The kernel drops it when the process dies, so kill -9 never leaves
// a stale lock behind.
type stateLock struct{ f *os.File }

// acquireLock takes the lock, waiting for a tick that holds it (at most
// wait, when positive; else as long as ctx allows). It says once on out
// that it waits.
func acquireLock(ctx context.Context, dir string, wait time.Duration, out io.Writer) (*stateLock, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if wait > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	told := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		holder := lockHolder(path)
		if !told && out != nil {
			fmt.Fprintf(out, "bento: another tick is running (%s); waiting for it\n", holder)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another tick holds %s (%s) and did not finish in time: %w", path, holder, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The pid is only for messages; the flock is what counts.
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &stateLock{f: f}, nil
}

func lockHolder(path string) string {
	b, err := os.ReadFile(path)
	pid := strings.TrimSpace(string(b))
	if err != nil || pid == "" {
		return "pid unknown"
	}
	return "pid " + pid
}

func (l *stateLock) release() {
	if l != nil && l.f != nil {
		syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
		l.f.Close()
	}
}
