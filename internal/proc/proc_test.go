package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/testio"
)

// signals records what Run sends, and sends it.
type signals struct {
	mu   sync.Mutex
	sent []syscall.Signal
}

func (s *signals) send(pid int, sig syscall.Signal) error {
	if sig != 0 {
		s.mu.Lock()
		s.sent = append(s.sent, sig)
		s.mu.Unlock()
	}
	return syscall.Kill(pid, sig)
}

func (s *signals) list() []syscall.Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]syscall.Signal(nil), s.sent...)
}

// escalating reports whether some goroutine still runs escalate: the
// part of Run that sends signals. After Run returns there must be none,
// or it could signal a process group id the kernel has handed out again.
func escalating() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Contains(buf, []byte("internal/proc.escalate("))
}

// gone waits until no process has marker in its command line.
func gone(t *testing.T, marker string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var alive []string
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && bytes.Contains(cmdline, []byte(marker)) {
				alive = append(alive, e.Name())
			}
		}
		if len(alive) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v survived", alive)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCancellation(t *testing.T) {
	unique := fmt.Sprintf("30.%d", time.Now().UnixNano()%1e9)
	tests := []struct {
		name     string
		script   string
		grace    time.Duration
		detached bool
		// answer, when set, is written to the process's stdin after ctx
		// is cancelled.
		answer      string
		wantSignals []syscall.Signal
		wantErr     error
		wantOut     string
		// fast: Run must return well before the grace period ends.
		fast bool
	}{
		{
			name:        "TERM honoured",
			script:      `trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.01; done`,
			grace:       20 * time.Second,
			wantSignals: []syscall.Signal{syscall.SIGTERM},
			wantErr:     context.Canceled,
			wantOut:     "bye",
			fast:        true,
		},
		{
			name:        "TERM ignored: KILL after the grace",
			script:      `trap '' TERM; echo ready; while :; do sleep 0.01; done`,
			grace:       300 * time.Millisecond,
			wantSignals: []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL},
			wantErr:     context.Canceled,
		},
		{
			name: "a child that ignores TERM is killed with the group",
			// The shell honours TERM; its child, which holds the output
			// open, does not.
			script:      `(trap '' TERM; echo ready; exec sleep ` + unique + `) & wait`,
			grace:       300 * time.Millisecond,
			wantSignals: []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL},
			wantErr:     context.Canceled,
		},
		{
			name:     "detached survives cancellation",
			script:   `echo ready; read x; echo got $x`,
			grace:    300 * time.Millisecond,
			detached: true,
			answer:   "go\n",
			wantOut:  "got go",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := &testio.Buffer{}
			ready := out.Line("ready")
			// An *os.File, so that exec hands it over instead of copying.
			stdin, feed, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer stdin.Close()
			defer feed.Close()
			sig := &signals{}
			done := make(chan error, 1)
			var took time.Duration
			go func() {
				start := time.Now()
				_, err := Run(ctx, Cmd{Argv: []string{"sh", "-c", tc.script}, Stdin: stdin, Stdout: out, Grace: tc.grace, Detached: tc.detached, signal: sig.send})
				took = time.Since(start)
				done <- err
			}()
			select {
			case <-ready:
			case err := <-done:
				t.Fatalf("ended before it was ready: %v (%q)", err, out)
			}
			cancel()
			if tc.answer != "" {
				io.WriteString(feed, tc.answer)
			}
			select {
			case err = <-done:
			case <-time.After(tc.grace + 10*time.Second):
				t.Fatal("Run did not return after cancel")
			}
			if escalating() {
				t.Error("escalation still pending after Run returned")
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if got := sig.list(); fmt.Sprint(got) != fmt.Sprint(tc.wantSignals) {
				t.Errorf("signals %v, want %v", got, tc.wantSignals)
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output %q, want %q", out, tc.wantOut)
			}
			if tc.fast && took >= tc.grace/2 {
				t.Errorf("Run took %s: it waited for the grace period of a process that had gone", took)
			}
			if !tc.fast && tc.wantErr != nil && took < tc.grace {
				t.Errorf("Run took %s, less than the grace period %s", took, tc.grace)
			}
			gone(t, unique)
		})
	}
}

// Without cancellation Run never signals anything, and leaves nothing
// running behind.
func TestNoSignalWithoutCancel(t *testing.T) {
	sig := &signals{}
	res, err := Run(context.Background(), Cmd{Argv: []string{"sh", "-c", "echo hi"}, signal: sig.send})
	if err != nil || string(res.Stdout) != "hi\n" {
		t.Fatalf("got %q, %v", res.Stdout, err)
	}
	if got := sig.list(); len(got) != 0 {
		t.Errorf("signals %v sent to a process that ended by itself", got)
	}
	if escalating() {
		t.Error("escalation still pending after Run returned")
	}
}

func TestOwnProcessGroup(t *testing.T) {
	for _, detached := range []bool{false, true} {
		t.Run("detached="+strconv.FormatBool(detached), func(t *testing.T) {
			res, err := Run(context.Background(), Cmd{Argv: []string{"sh", "-c", `echo $$; cut -d' ' -f5 /proc/$$/stat`}, Detached: detached})
			if err != nil {
				t.Fatal(err)
			}
			f := strings.Fields(string(res.Stdout))
			if len(f) != 2 || f[0] != f[1] {
				t.Fatalf("pid and process group %q: want a group of its own", f)
			}
			if f[1] == strconv.Itoa(syscall.Getpgrp()) {
				t.Fatal("the process runs in the caller's group")
			}
		})
	}
}

// A context that is already done starts nothing, unless detached.
func TestDoneContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		detached bool
		wantRun  bool
	}{{false, false}, {true, true}} {
		marker := filepath.Join(t.TempDir(), "ran")
		_, err := Run(ctx, Cmd{Argv: []string{"touch", marker}, Detached: tc.detached})
		_, statErr := os.Stat(marker)
		if ran := statErr == nil; ran != tc.wantRun {
			t.Errorf("detached=%v: ran %v, want %v (error %v)", tc.detached, ran, tc.wantRun, err)
		}
		if !tc.wantRun && !errors.Is(err, context.Canceled) {
			t.Errorf("detached=%v: error %v, want context.Canceled", tc.detached, err)
		}
	}
}

func TestError(t *testing.T) {
	tests := []struct {
		name     string
		argv     []string
		wantMsg  string
		wantCode int
		notFound bool
	}{
		{
			name:     "exit status and output tail",
			argv:     []string{"/bin/sh", "-c", "for i in 1 2 3 4 5 6 7; do echo line $i >&2; done; exit 3"},
			wantMsg:  `sh -c "for i in 1 2 3 4 5 6 7; do echo line $i >&2; done; exit 3" exited with status 3: line 3` + "\n  line 4\n  line 5\n  line 6\n  line 7",
			wantCode: 3,
		},
		{
			name:     "killed by a signal",
			argv:     []string{"sh", "-c", "kill -9 $$"},
			wantMsg:  `sh -c "kill -9 $$": signal: killed`,
			wantCode: -1,
		},
		{
			name:     "not in PATH",
			argv:     []string{"bento-no-such-program", "x"},
			wantMsg:  `bento-no-such-program x: exec: "bento-no-such-program": executable file not found in $PATH`,
			wantCode: -1,
			notFound: true,
		},
		{
			name:     "absolute path missing",
			argv:     []string{"/nonexistent/bin/tool"},
			wantMsg:  "tool: fork/exec /nonexistent/bin/tool: no such file or directory",
			wantCode: -1,
			notFound: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(context.Background(), Cmd{Argv: tc.argv})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if err.Error() != tc.wantMsg {
				t.Errorf("message\n%s\nwant\n%s", err, tc.wantMsg)
			}
			if e.ExitCode != tc.wantCode {
				t.Errorf("exit code %d, want %d", e.ExitCode, tc.wantCode)
			}
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("errors.Is(ErrNotFound) = %v, want %v", !tc.notFound, tc.notFound)
			}
		})
	}
	// A missing directory is not a missing program.
	_, err := Run(context.Background(), Cmd{Argv: []string{"true"}, Dir: "/nonexistent"})
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("missing Dir: %v, want an error other than ErrNotFound", err)
	}
}

// The output kept for the error is bounded however much the process
// prints; standard output, its answer, is kept apart and whole.
func TestTailBounded(t *testing.T) {
	script := `i=0; while [ $i -lt 20000 ]; do echo "progress line $i" >&2; i=$((i+1)); done; echo answer; echo last >&2; exit 1`
	res, err := Run(context.Background(), Cmd{Argv: []string{"sh", "-c", script}, TailBytes: 1000})
	if len(res.Tail) > 1000 || !strings.HasSuffix(res.Tail, "progress line 19999\nlast\n") {
		t.Errorf("tail of %d bytes ending %q", len(res.Tail), res.Tail[max(0, len(res.Tail)-60):])
	}
	if string(res.Stdout) != "answer\n" || strings.Contains(res.Tail, "answer") {
		t.Errorf("stdout %q and tail must stay apart", res.Stdout)
	}
	var e *Error
	if !errors.As(err, &e) || strings.Count(e.Output, "\n")+1 != errorLines || !strings.HasSuffix(e.Output, "last") {
		t.Errorf("error output %q: want the last %d lines", e.Output, errorLines)
	}
}

func TestCombinedKeepsOrder(t *testing.T) {
	var log bytes.Buffer
	res, err := Run(context.Background(), Cmd{Argv: []string{"sh", "-c", "echo a; echo b >&2; echo c"}, Combined: true, Stderr: &log})
	if err != nil || res.Tail != "a\nb\nc\n" || log.String() != "a\nb\nc\n" || len(res.Stdout) != 0 {
		t.Fatalf("tail %q, log %q, stdout %q, %v", res.Tail, log.String(), res.Stdout, err)
	}
}

func TestTailBuffer(t *testing.T) {
	tests := []struct {
		writes []string
		want   string
	}{
		{[]string{"ab", "cd"}, "abcd"},
		{[]string{"abc", "def"}, "bcdef"},
		{[]string{"abcdefgh"}, "defgh"},
		{[]string{"a", "bcdefghij", "k"}, "ghijk"},
	}
	for _, tc := range tests {
		b := &TailBuffer{Max: 5}
		for _, w := range tc.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("Write(%q) = %d, %v", w, n, err)
			}
		}
		if b.String() != tc.want {
			t.Errorf("%q: got %q, want %q", tc.writes, b.String(), tc.want)
		}
	}
}

func TestQuote(t *testing.T) {
	long := strings.Repeat("x", 200)
	tests := []struct {
		argv []string
		want string
	}{
		{[]string{"/nix/store/abc-system/bin/switch-to-configuration", "switch"}, "switch-to-configuration switch"},
		{[]string{"git", "-C", "/a b", "ls-files"}, `git -C "/a b" ls-files`},
		{[]string{"nix", long}, "nix " + long[:117] + "..."},
	}
	for _, tc := range tests {
		if got := Quote(tc.argv); got != tc.want {
			t.Errorf("Quote(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// Without a tail, a file reaches the process as its own descriptor, not
// through a pipe that would close when bento exits.
func TestNoTailPassesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		tail int
		want string
	}{{-1, path}, {0, "pipe:"}} {
		f.Truncate(0)
		f.Seek(0, 0)
		if _, err := Run(context.Background(), Cmd{Argv: []string{"sh", "-c", "readlink /proc/$$/fd/1; readlink /proc/$$/fd/2 >&2"}, Stderr: f, Combined: true, TailBytes: tc.tail}); err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(path)
		if lines := strings.Split(strings.TrimSpace(string(data)), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], tc.want) || !strings.HasPrefix(lines[1], tc.want) {
			t.Errorf("TailBytes %d: the process wrote to %q, want %s", tc.tail, lines, tc.want)
		}
	}
}

func TestErrorBrief(t *testing.T) {
	argv := []string{"/nix/store/x-system/bin/switch-to-configuration", "switch"}
	for _, c := range []struct {
		name string
		err  *Error
		want string
	}{
		{"output: from its last error line", &Error{Argv: argv, ExitCode: 4, Output: "stopping the following units: a.service\n  activating the configuration...\n  error: unit 'shop.service' failed to start\n  see journalctl -u shop", Err: errors.New("exit status 4")},
			"error: unit 'shop.service' failed to start\n  see journalctl -u shop"},
		{"output without an error line: all of it", &Error{Argv: argv, ExitCode: 1, Output: "no space left\n  giving up", Err: errors.New("exit status 1")}, "no space left\n  giving up"},
		{"killed after some output: why, then the output", &Error{Argv: argv, ExitCode: -1, Output: "starting the following units: a.service", Err: errors.New("signal: killed")}, "signal: killed: starting the following units: a.service"},
		{"no output: the exit status", &Error{Argv: []string{"false"}, ExitCode: 1, Err: errors.New("exit status 1")}, "exited with status 1"},
		{"did not start: why", &Error{Argv: []string{"age"}, ExitCode: -1, Err: errors.New(`exec: "age": executable file not found in $PATH`)}, `exec: "age": executable file not found in $PATH`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.err.Brief(); got != c.want {
				t.Errorf("Brief = %q, want %q", got, c.want)
			}
			if strings.Contains(c.err.Brief(), argv[0]) {
				t.Errorf("Brief kept the command line: %q", c.err.Brief())
			}
		})
	}
}
