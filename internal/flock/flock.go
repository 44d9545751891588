// Package flock is bento's one file lock: flock(2) on a lock file, taken
// with a context and an optional bound on the wait. The kernel drops the
// lock when the process dies, so kill -9 never leaves a stale lock
// behind; the lock file itself stays, and is reused.
package flock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrHeld is returned (wrapped) when another process holds the lock and
// the wait allowed by Options is over.
var ErrHeld = errors.New("held by another process")

// Options say how to take a lock.
type Options struct {
	// Shared takes a shared lock (many holders), not an exclusive one.
	Shared bool
	// NoWait fails at once with ErrHeld when the lock is held.
	NoWait bool
	// Timeout bounds the wait; then the error wraps ErrHeld and
	// context.DeadlineExceeded. Zero waits as long as ctx allows.
	Timeout time.Duration
	// OnWait is called once, when the lock is first found held.
	OnWait func()
	// WritePID replaces the file's content with this process's pid once
	// the lock is taken, for Holder to report; otherwise taking the lock
	// writes nothing once the file exists.
	WritePID bool
	// Perm is the lock file's mode when it is created; 0644 when zero.
	Perm os.FileMode
	// Existing opens only a lock file that exists (an fs.ErrNotExist
	// error otherwise): a probe that must change nothing.
	Existing bool
}

// Lock is a lock held on a file.
type Lock struct{ f *os.File }

// Polling bounds: flock(2) cannot wait on a context, so a held lock is
// retried, quickly at first for short holds, then more calmly.
const (
	firstPoll = 10 * time.Millisecond
	maxPoll   = 250 * time.Millisecond
)

// Acquire takes the lock on path, creating the file if needed.
func Acquire(ctx context.Context, path string, o Options) (*Lock, error) {
	flags := os.O_RDONLY
	if o.WritePID {
		flags = os.O_RDWR
	}
	if !o.Existing {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, cmp.Or(o.Perm, 0o644))
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := take(ctx, f, o); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if o.WritePID {
		// Only for messages; the flock is what counts.
		if err := f.Truncate(0); err == nil {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
	}
	return &Lock{f: f}, nil
}

// take flocks f, retrying while another holds it as long as o and ctx
// allow.
func take(ctx context.Context, f *os.File, o Options) error {
	how := syscall.LOCK_EX
	if o.Shared {
		how = syscall.LOCK_SH
	}
	wait := ctx
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	for delay, told := firstPoll, false; ; delay = min(delay*2, maxPoll) {
		busy, err := tryFlock(f, how)
		if !busy {
			return err
		}
		if o.NoWait {
			return ErrHeld
		}
		if !told && o.OnWait != nil {
			o.OnWait()
		}
		told = true
		if err := poll(ctx, wait, delay, o.Timeout); err != nil {
			return err
		}
	}
}

// tryFlock flocks f without waiting; busy says that another holds it (or
// a signal interrupted the call): try again.
func tryFlock(f *os.File, how int) (busy bool, err error) {
	err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EINTR) {
		return true, nil
	}
	return false, err
}

// poll waits delay before the next try; its error ends the wait: ctx's,
// or ErrHeld when wait (ctx bounded by timeout) is over.
func poll(ctx, wait context.Context, delay, timeout time.Duration) error {
	t := time.NewTimer(delay)
	select {
	case <-wait.Done():
		t.Stop()
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("%w after %s: %w", ErrHeld, timeout, wait.Err())
	case <-t.C:
		return nil
	}
}

// Release drops the lock. It is safe on a nil or released Lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	err := l.f.Close()
	l.f = nil
	return err
}

// Holder names the process that wrote its pid into the lock file
// (Options.WritePID): "pid N", or "pid unknown".
func Holder(path string) string {
	// Anyone who can write the file can put anything there: read a few
	// bytes and accept only a number.
	f, err := os.Open(path)
	if err != nil {
		return "pid unknown"
	}
	defer f.Close()
	buf := make([]byte, 24)
	n, _ := f.Read(buf)
	pid := strings.TrimSpace(string(buf[:n]))
	if _, err := strconv.ParseUint(pid, 10, 32); err != nil {
		return "pid unknown"
	}
	return "pid " + pid
}
