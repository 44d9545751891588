// Package nix is the one place where bento starts Nix commands. Every call
// carries a context (cancellation kills the whole process group, so no stray
// builders survive Ctrl-C), captures stderr, and turns a failure into an
// *Error that quotes Nix's own message, the command and the host.
package nix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// killDelay is how long a cancelled command's process group has between
// SIGTERM and SIGKILL.
const killDelay = 5 * time.Second

// Runner runs Nix commands. The zero value runs "nix" from PATH with the
// process environment.
type Runner struct {
	// Bin is the nix binary; "nix" when empty. Other tools of the same
	// installation (nix-env, nix-store) are looked up beside it.
	Bin string
	// Env is appended to the process environment (e.g. NIX_CONFIG).
	Env []string
	// Logger receives one debug line per command; nil discards.
	Logger *slog.Logger
}

// Cmd is one invocation.
type Cmd struct {
	// Host the command works for; used only in error messages.
	Host string
	// Tool is the program to run: "" means nix, or "nix-env", "nix-store"…
	Tool string
	Args []string
	Dir  string
	// Stdout receives standard output; when nil it is captured and returned.
	Stdout io.Writer
	// Log, when set, receives a copy of standard error as it is produced
	// (a per-host build log, a live progress reader).
	Log io.Writer
	// ExtraEnv is appended after Runner.Env.
	ExtraEnv []string
	// MaxRSS, when set, receives the process's peak resident memory in
	// bytes once it has exited (0 when unknown), whether it failed or not:
	// discovery sizes its chunks from it.
	MaxRSS *int64
}

// Error is a failed Nix command.
type Error struct {
	Host     string
	Command  []string
	ExitCode int
	// Message is the meaningful tail of Nix's standard error.
	Message string
	Err     error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Host != "" {
		fmt.Fprintf(&b, "host %s: ", e.Host)
	}
	b.WriteString(shortCommand(e.Command))
	b.WriteString(": ")
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// ErrNotInstalled is returned (wrapped) when the nix binary cannot be found.
var ErrNotInstalled = errors.New("nix is not installed or not on PATH (on Debian: apt-get install nix-bin)")

// ErrFlakesDisabled is returned (wrapped) when Nix refuses flakes or nix-command.
//
//lint:ignore ST1005 "Nix" is a name, capitalised wherever the message stands.
var ErrFlakesDisabled = errors.New("Nix's experimental features are off: add \"experimental-features = nix-command flakes\" to /etc/nix/nix.conf or NIX_CONFIG")

func (r *Runner) bin(tool string) string {
	base := r.Bin
	if base == "" {
		base = "nix"
	}
	if tool == "" || tool == "nix" {
		return base
	}
	if strings.ContainsRune(base, '/') {
		return base[:strings.LastIndexByte(base, '/')+1] + tool
	}
	return tool
}

// Run runs c and returns its standard output when c.Stdout is nil.
func (r *Runner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	bin := r.bin(c.Tool)
	cmd := exec.CommandContext(ctx, bin, c.Args...)
	cmd.Dir = c.Dir
	cmd.Env = append(append(os.Environ(), r.Env...), c.ExtraEnv...)
	// A process group of its own, so that cancelling kills nix and every
	// builder it forked, not only the direct child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		pgid := cmd.Process.Pid
		// Builders that ignore SIGTERM get SIGKILL a little later; the
		// group outlives nix itself, so WaitDelay's kill of nix is not enough.
		time.AfterFunc(killDelay, func() { syscall.Kill(-pgid, syscall.SIGKILL) })
		return syscall.Kill(-pgid, syscall.SIGTERM)
	}
	cmd.WaitDelay = killDelay + time.Second

	var stdout bytes.Buffer
	if c.Stdout != nil {
		cmd.Stdout = c.Stdout
	} else {
		cmd.Stdout = &stdout
	}
	stderr := &TailBuffer{Max: 64 << 10}
	if c.Log != nil {
		cmd.Stderr = io.MultiWriter(stderr, c.Log)
	} else {
		cmd.Stderr = stderr
	}
	full := append([]string{bin}, c.Args...)
	if r.Logger != nil {
		r.Logger.Debug("running", "host", c.Host, "cmd", strings.Join(full, " "))
	}
	err := cmd.Run()
	if c.MaxRSS != nil {
		*c.MaxRSS = 0
		if cmd.ProcessState != nil {
			if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
				// Linux reports ru_maxrss in KiB.
				*c.MaxRSS = ru.Maxrss * 1024
			}
		}
	}
	if err == nil {
		return stdout.Bytes(), nil
	}
	e := &Error{Host: c.Host, Command: full, ExitCode: -1, Err: err}
	var exitErr *exec.ExitError
	switch {
	case errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist) && cmd.ProcessState == nil:
		e.Err = fmt.Errorf("%w: %w", ErrNotInstalled, err)
		return nil, e
	case ctx.Err() != nil:
		e.Err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		e.Message = ""
		return nil, e
	case errors.As(err, &exitErr):
		e.ExitCode = exitErr.ExitCode()
	}
	e.Message = Summarize(stderr.String())
	if isFlakesDisabled(stderr.String()) {
		e.Err = fmt.Errorf("%w: %w", ErrFlakesDisabled, err)
		e.Message = ErrFlakesDisabled.Error()
	}
	return nil, e
}

// Output is Run for the common case: nix with args, stdout returned.
func (r *Runner) Output(ctx context.Context, host string, args ...string) ([]byte, error) {
	return r.Run(ctx, Cmd{Host: host, Args: args})
}

func isFlakesDisabled(stderr string) bool {
	return strings.Contains(stderr, "experimental Nix feature 'flakes' is disabled") ||
		strings.Contains(stderr, "experimental Nix feature 'nix-command' is disabled")
}

// Summarize returns the meaningful part of Nix's standard error: from the
// last line starting with "error:" onwards (Nix prints the trace before it in
// older versions and after it in newer ones), otherwise the last few
// non-empty lines, joined on one line each separated by " | " when short.
func Summarize(stderr string) string {
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	var kept []string
	for _, l := range lines {
		l = strings.TrimRight(stripANSI(l), " \r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		kept = append(kept, l)
	}
	if len(kept) == 0 {
		return ""
	}
	start := -1
	for i, l := range kept {
		if strings.HasPrefix(strings.TrimSpace(l), "error:") {
			start = i
		}
	}
	var out []string
	if start >= 0 {
		out = kept[start:]
		// Drop trace noise that follows the message in newer Nix.
		for i, l := range out {
			if i > 0 && strings.Contains(l, "(use '--show-trace'") {
				out = out[:i]
				break
			}
		}
	} else {
		if len(kept) > 5 {
			kept = kept[len(kept)-5:]
		}
		out = kept
	}
	if len(out) > 12 {
		out = append(out[:12], "…")
	}
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return strings.Join(out, "\n  ")
}

// Tail returns the last n non-empty lines of s.
func Tail(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	var kept []string
	for _, l := range lines {
		if strings.TrimSpace(l) != "" {
			kept = append(kept, stripANSI(l))
		}
	}
	if len(kept) > n {
		kept = kept[len(kept)-n:]
	}
	return kept
}

func shortCommand(args []string) string {
	var parts []string
	for _, a := range args {
		if len(a) > 120 {
			a = a[:117] + "..."
		}
		if strings.ContainsAny(a, " \t\n\"'") {
			a = fmt.Sprintf("%q", a)
		}
		parts = append(parts, a)
	}
	if len(parts) > 0 {
		if i := strings.LastIndexByte(parts[0], '/'); i >= 0 {
			parts[0] = parts[0][i+1:]
		}
	}
	return strings.Join(parts, " ")
}

func stripANSI(s string) string {
	if !strings.ContainsRune(s, 0x1b) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] < 0x40 || s[j] > 0x7e) {
				j++
			}
			i = j
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// TailBuffer keeps the last Max bytes written to it: enough of a long
// command's output to quote its error, without holding all of it.
type TailBuffer struct {
	buf []byte
	Max int
}

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.Max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.Max:]...)
	}
	return len(p), nil
}

func (t *TailBuffer) String() string { return string(t.buf) }
