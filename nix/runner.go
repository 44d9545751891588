// Package nix is the one place where bento starts Nix commands. Every call
// carries a context and runs through internal/proc (cancellation stops the
// whole process group, so no stray builders survive Ctrl-C), captures
// stderr, and turns a failure into an *Error that quotes Nix's own
// message, the command and the host.
package nix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/proc"
)

// killDelay is how long a cancelled command's process group has between
// SIGTERM and SIGKILL: nix passes SIGTERM on to its builders and needs a
// moment to clean up.
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
	// Detached runs the command to its end even when ctx is cancelled
	// (see proc.Cmd.Detached).
	Detached bool
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
	b.WriteString(proc.Quote(e.Command))
	b.WriteString(": ")
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Brief is Nix's own message without the command line: what a status row
// has room for.
func (e *Error) Brief() string {
	if e.Message != "" {
		return e.Message
	}
	return e.Err.Error()
}

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
	full := append([]string{r.bin(c.Tool)}, c.Args...)
	if r.Logger != nil {
		r.Logger.Debug("running", "host", c.Host, "cmd", strings.Join(full, " "))
	}
	// proc gives nix a process group of its own, so that cancelling kills
	// nix and every builder it forked, not only the direct child.
	res, err := proc.Run(ctx, proc.Cmd{
		Argv:      full,
		Dir:       c.Dir,
		Env:       append(append([]string(nil), r.Env...), c.ExtraEnv...),
		Stdout:    c.Stdout,
		Stderr:    c.Log,
		TailBytes: 64 << 10,
		Grace:     killDelay,
		Detached:  c.Detached,
	})
	if c.MaxRSS != nil {
		*c.MaxRSS = res.MaxRSS
	}
	if err == nil {
		return res.Stdout, nil
	}
	e := &Error{Host: c.Host, Command: full, ExitCode: -1, Err: err}
	var pe *proc.Error
	if errors.As(err, &pe) {
		// The command is quoted by e itself; keep only the cause.
		e.Err = pe.Err
	}
	switch {
	case errors.Is(err, proc.ErrNotFound):
		e.Err = fmt.Errorf("%w: %w", ErrNotInstalled, e.Err)
		return nil, e
	case ctx.Err() != nil && !c.Detached:
		return nil, e
	case pe != nil:
		e.ExitCode = pe.ExitCode
	}
	e.Message = Summarize(res.Tail)
	if isFlakesDisabled(res.Tail) {
		e.Err = fmt.Errorf("%w: %w", ErrFlakesDisabled, e.Err)
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
	kept := nonEmptyLines(stderr)
	if len(kept) == 0 {
		return ""
	}
	out := meaningfulLines(kept)
	if len(out) > 12 {
		out = append(out[:12], "…")
	}
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return strings.Join(out, "\n  ")
}

// nonEmptyLines splits stderr into its lines without escape sequences,
// trailing blanks or empty lines.
func nonEmptyLines(stderr string) []string {
	var kept []string
	for _, l := range strings.Split(strings.TrimRight(stderr, "\n"), "\n") {
		l = strings.TrimRight(proc.StripANSI(l), " \r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		kept = append(kept, l)
	}
	return kept
}

// meaningfulLines picks, of Nix's non-empty stderr lines, the message from
// the last "error:" line on, else the last five lines.
func meaningfulLines(kept []string) []string {
	start := -1
	for i, l := range kept {
		if strings.HasPrefix(strings.TrimSpace(l), "error:") {
			start = i
		}
	}
	if start < 0 {
		if len(kept) > 5 {
			kept = kept[len(kept)-5:]
		}
		return kept
	}
	out := kept[start:]
	// Drop trace noise that follows the message in newer Nix.
	for i, l := range out {
		if i > 0 && strings.Contains(l, "(use '--show-trace'") {
			return out[:i]
		}
	}
	return out
}

// Tail returns the last n non-empty lines of s, without escape sequences.
func Tail(s string, n int) []string { return proc.LastLines(s, n) }
