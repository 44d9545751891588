package nix_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-nix/bento/nix"
)

func TestSummarize(t *testing.T) {
	cases := []struct {
		name, stderr, want string
	}{
		{"empty", "", ""},
		{"plain error", "warning: Git tree is dirty\nerror: attribute 'x' missing\n", "error: attribute 'x' missing"},
		{"trace before error (old nix)", "trace: a\n       … while evaluating\nerror: boom\n       at foo.nix:1:2\n", "error: boom\n  at foo.nix:1:2"},
		{"no error line keeps the tail", "1\n2\n3\n4\n5\n6\n7\n", "3\n  4\n  5\n  6\n  7"},
		{"ansi stripped", "\x1b[31;1merror:\x1b[0m bad\n", "error: bad"},
		{"show-trace hint dropped", "error: boom\n(use '--show-trace' to show detailed location information)\n", "error: boom"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := nix.Summarize(tc.stderr); got != tc.want {
				t.Errorf("Summarize(%q) = %q, want %q", tc.stderr, got, tc.want)
			}
		})
	}
}

// fakeTool writes an executable script standing in for a nix tool, to test
// the runner's own mechanics (exit codes, stderr, process groups).
func fakeTool(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nix")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestErrorQuotesNixAndHost(t *testing.T) {
	r := &nix.Runner{Bin: fakeTool(t, "echo 'building...' >&2; echo 'error: builder failed' >&2; exit 3\n")}
	_, err := r.Output(context.Background(), "alpha", "build", ".#x")
	var ne *nix.Error
	if !errors.As(err, &ne) {
		t.Fatalf("want *nix.Error, got %v", err)
	}
	if ne.ExitCode != 3 {
		t.Errorf("exit code %d, want 3", ne.ExitCode)
	}
	for _, want := range []string{"host alpha: ", "nix build .#x", "error: builder failed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not contain %q", err, want)
		}
	}
}

func TestToolsAreFoundBesideNix(t *testing.T) {
	dir := filepath.Dir(fakeTool(t, "exit 0\n"))
	env := filepath.Join(dir, "nix-env")
	if err := os.WriteFile(env, []byte("#!/bin/sh\necho nix-env \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := &nix.Runner{Bin: filepath.Join(dir, "nix")}
	out, err := r.Run(context.Background(), nix.Cmd{Tool: "nix-env", Args: []string{"-p", "x"}})
	if err != nil || strings.TrimSpace(string(out)) != "nix-env -p x" {
		t.Fatalf("got %q, %v", out, err)
	}
}

// readyWriter closes ready when the command prints a line "ready".
type readyWriter struct {
	mu    sync.Mutex
	buf   strings.Builder
	ready chan struct{}
	once  sync.Once
}

func (w *readyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), "ready\n") {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

// survivors lists the processes whose command line holds marker, waiting
// a little for killed ones to go (SIGKILL takes effect asynchronously).
func survivors(marker string) []string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		var alive []string
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && strings.Contains(string(cmdline), marker) {
				alive = append(alive, fmt.Sprintf("%s %q", e.Name(), cmdline))
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Cancelling must kill every process the command started, not only nix,
// and Run returns only once they are gone: a process that honours SIGTERM
// quickly, one that ignores it after the kill delay.
func TestCancelKillsProcessGroup(t *testing.T) {
	tests := []struct {
		name   string
		script string
	}{
		{"honours TERM", "(sleep %[1]s) &\necho ready >&2\nsleep %[1]s\n"},
		{"ignores TERM", "trap '' TERM\n(trap '' TERM; sleep %[1]s) &\necho ready >&2\nsleep %[1]s\n"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A sleep duration no other process uses marks our grandchild.
			unique := fmt.Sprintf("3%d.%d", i, time.Now().UnixNano()%1e9)
			r := &nix.Runner{Bin: fakeTool(t, fmt.Sprintf(tc.script, unique))}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			log := &readyWriter{ready: make(chan struct{})}
			done := make(chan error, 1)
			go func() { _, err := r.Run(ctx, nix.Cmd{Host: "alpha", Args: []string{"build"}, Log: log}); done <- err }()
			select {
			case <-log.ready:
			case err := <-done:
				t.Fatalf("ended before it was ready: %v", err)
			}
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("want context.Canceled, got %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return after cancel")
			}
			if alive := survivors(unique); len(alive) > 0 {
				t.Errorf("processes survived cancellation: %v", alive)
			}
			// Nothing may signal the group once Run has returned: its id
			// may then belong to another process group.
			buf := make([]byte, 1<<20)
			if bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("internal/proc.escalate(")) {
				t.Error("a SIGKILL for the process group is still pending after Run returned")
			}
		})
	}
}

func TestNotInstalled(t *testing.T) {
	r := &nix.Runner{Bin: "/nonexistent/bin/nix"}
	_, err := r.Output(context.Background(), "", "eval")
	if !errors.Is(err, nix.ErrNotInstalled) {
		t.Fatalf("want ErrNotInstalled, got %v", err)
	}
}

// A detached command runs to its end although ctx is already done.
func TestDetachedIgnoresCancel(t *testing.T) {
	r := &nix.Runner{Bin: fakeTool(t, "echo done\n")}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Run(ctx, nix.Cmd{Args: []string{"x"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("attached: %v, want context.Canceled", err)
	}
	out, err := r.Run(ctx, nix.Cmd{Args: []string{"x"}, Detached: true})
	if err != nil || string(out) != "done\n" {
		t.Errorf("detached: %q, %v", out, err)
	}
}
