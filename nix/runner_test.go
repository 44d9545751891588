package nix_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// Cancelling must kill every process the command started, not only nix.
func TestCancelKillsProcessGroup(t *testing.T) {
	// A sleep duration no other process uses marks our grandchild.
	unique := fmt.Sprintf("30.%d", time.Now().UnixNano()%1e9)
	r := &nix.Runner{Bin: fakeTool(t, "(sleep "+unique+") &\nsleep "+unique+"\n")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := r.Output(ctx, "alpha", "build"); done <- err }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("want context.Canceled, got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The grandchild sleep must be gone: look for it in /proc.
	time.Sleep(100 * time.Millisecond)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), unique) {
			t.Errorf("process %s survived cancellation: %q", e.Name(), cmdline)
		}
	}
}

func TestNotInstalled(t *testing.T) {
	r := &nix.Runner{Bin: "/nonexistent/bin/nix"}
	_, err := r.Output(context.Background(), "", "eval")
	if !errors.Is(err, nix.ErrNotInstalled) {
		t.Fatalf("want ErrNotInstalled, got %v", err)
	}
}

// A process that ignores SIGTERM is killed all the same, with its group.
func TestCancelKillsStubbornProcesses(t *testing.T) {
	unique := fmt.Sprintf("31.%d", time.Now().UnixNano()%1e9)
	r := &nix.Runner{Bin: fakeTool(t, "trap '' TERM\n(trap '' TERM; sleep "+unique+") &\nsleep "+unique+"\n")}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := r.Output(ctx, "alpha", "build"); done <- err }()
	time.Sleep(200 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	time.Sleep(6 * time.Second) // past the SIGKILL delay
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), unique) {
			t.Errorf("process %s survived cancellation: %q", e.Name(), cmdline)
		}
	}
}
