package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/flock"
)

// The messages a user sees while another tick holds the lock name that
// tick's pid; the lock file then holds the new holder's.
func TestLockWaitMessages(t *testing.T) {
	dir := t.TempDir()
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	f.WriteString("4242\n")

	for _, tc := range []struct {
		name   string
		wait   time.Duration
		errHas string
		errIs  error
		said   string
	}{
		// --lock-wait 100ms: says it waits, and how long, then gives up.
		{"bounded", 100 * time.Millisecond, "(pid 4242) and did not finish in time", context.DeadlineExceeded,
			"bento: another tick is running (pid 4242); waiting up to 100ms for it\n"},
		// --lock-wait 0 (a negative LockWait): gives up at once and
		// never says it waits.
		{"no wait", -1, "(pid 4242), and --lock-wait 0 does not wait for it", flock.ErrHeld, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := acquireLock(context.Background(), dir, tc.wait, &out)
			if err == nil || !strings.Contains(err.Error(), "another tick holds") || !strings.Contains(err.Error(), tc.errHas) || !errors.Is(err, tc.errIs) {
				t.Errorf("error %v, want one with %q wrapping %v", err, tc.errHas, tc.errIs)
			}
			if out.String() != tc.said {
				t.Errorf("said %q, want %q", out.String(), tc.said)
			}
		})
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := acquireLock(ctx, dir, 0, nil); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "another tick holds") {
		t.Errorf("cancelled: %v", err)
	}

	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	lk, err := acquireLock(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.release()
	if data, _ := os.ReadFile(filepath.Join(dir, lockFile)); string(data) != strconv.Itoa(os.Getpid())+"\n" {
		t.Errorf("lock file holds %q, want this process's pid", data)
	}
}
