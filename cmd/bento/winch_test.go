package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mattn/go-runewidth"
	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/manifest"
)

// openPTY opens a pseudo-terminal of cols columns: the master and the
// slave's path.
func openPTY(t *testing.T, cols uint16) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	fd := int(m.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	setCols(t, m, cols)
	return m, fmt.Sprintf("/dev/pts/%d", n)
}

func setCols(t *testing.T, m *os.File, cols uint16) {
	t.Helper()
	if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: cols}); err != nil {
		t.Fatal(err)
	}
}

// bento status --watch on a real terminal redraws at once when the
// terminal is resized (SIGWINCH), to the new width, and the failing
// host's retry time stays visible however narrow.
func TestStatusWatchRedrawsOnResize(t *testing.T) {
	bin := buildBento(t)
	s := statusRoot{t, filepath.Join(t.TempDir(), "chroot")}
	s.publish("web", "v2", statusSysB)
	retry := time.Now().Add(12*time.Minute + 30*time.Second).UTC()
	s.write("web", manifest.StatusFile, manifest.Report{
		Format: 1, Host: "web", SeenVersion: "v2", AppliedVersion: "v1", AttemptedVersion: "v2",
		Stage: manifest.StageFailed, Result: manifest.ResultFailure, Attempts: 3, NextRetry: &retry,
		Error:     "build: error: builder for '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web.drv' failed with exit code 1",
		StartedAt: time.Now().Add(-2 * time.Minute), FinishedAt: time.Now().Add(-time.Minute),
	})
	m, slave := openPTY(t, 200)
	tty, err := os.OpenFile(slave, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, statusArgs(s.root, "--no-eval", "--watch", "--every", "1h")...)
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "TERM=xterm")
	cmd.Stdout, cmd.Stderr = tty, tty
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tty.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	var mu sync.Mutex
	var out strings.Builder
	got := make(chan struct{}, 1)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := m.Read(b)
			mu.Lock()
			out.Write(b[:n])
			mu.Unlock()
			select {
			case got <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	// frames are the complete redraws so far: home … clear to the end.
	frames := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var fs []string
		for _, f := range strings.Split(out.String(), "\x1b[H")[1:] {
			if strings.Contains(f, "\x1b[J") {
				fs = append(fs, f)
			}
		}
		return fs
	}
	waitFrames := func(n int) []string {
		t.Helper()
		timeout := time.After(time.Minute)
		for {
			if fs := frames(); len(fs) >= n {
				return fs
			}
			select {
			case <-got:
			case <-timeout:
				t.Fatalf("no frame %d:\n%q", n, out.String())
			}
		}
	}
	// The retry is 12m30s away when written; each frame says how long is
	// left, to the second.
	retryIn := regexp.MustCompile(`\(retry in 12m[0-3][0-9]s\)`)
	wide := waitFrames(1)[0]
	if !regexp.MustCompile(`failed with exit code 1 \(attempt 3, retry in 12m[0-3][0-9]s\)`).MatchString(wide) {
		t.Fatalf("200 columns: the whole message, want it uncut:\n%s", wide)
	}
	codes := regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")
	for i, cols := range []uint16{80, 40} {
		setCols(t, m, cols)
		if err := cmd.Process.Signal(syscall.SIGWINCH); err != nil {
			t.Fatal(err)
		}
		frame := waitFrames(i + 2)[i+1]
		if !retryIn.MatchString(frame) || !strings.Contains(frame, "…") {
			t.Errorf("%d columns: the message must be cut and keep the retry time:\n%s", cols, frame)
		}
		if cols < 70 {
			// Narrower than the fixed columns and the shortest message:
			// the row wraps, the retry time is still there.
			continue
		}
		for _, line := range strings.Split(codes.ReplaceAllString(frame, ""), "\n") {
			line = strings.TrimRight(line, "\r")
			if w := runewidth.StringWidth(line); w > int(cols) {
				t.Errorf("after the resize to %d columns, a line of %d:\n%s", cols, w, line)
			}
		}
	}
}
