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

	var out bytes.Buffer
	_, err = acquireLock(context.Background(), dir, 100*time.Millisecond, &out)
	if err == nil || !strings.Contains(err.Error(), "another tick holds") || !strings.Contains(err.Error(), "(pid 4242) and did not finish in time") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v", err)
	}
	if out.String() != "bento: another tick is running (pid 4242); waiting for it\n" {
		t.Errorf("said %q", out.String())
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
