// Package proc is the one way bento runs a program. Every process gets a
// process group of its own, so that stopping it also stops what it forked
// (nix's builders, a shell's children); cancellation sends SIGTERM to the
// group and SIGKILL to whatever is left of it after a grace period, and
// Run does not return while any of that is pending, so no timer survives
// the process and can hit a reused group id later. A failure is an *Error
// that quotes the command, its exit status and the tail of its output.
//
// Nothing sits between bento and the program: no shell, no pipe to
// another process.
package proc

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultGrace is how long a cancelled process group has between SIGTERM
// and SIGKILL when Cmd.Grace is zero.
const DefaultGrace = 5 * time.Second

// DefaultTailBytes is how much output Run keeps for Result.Tail and the
// error when Cmd.TailBytes is zero.
const DefaultTailBytes = 32 << 10

// errorLines is how many of the last output lines an *Error quotes.
const errorLines = 5

// ErrNotFound matches (with errors.Is) the *Error of a program that could
// not be started because it does not exist.
var ErrNotFound = errors.New("program not found")

// Cmd is one process to run.
type Cmd struct {
	// Argv is the program and its arguments. A program without a slash is
	// looked up in PATH.
	Argv []string
	Dir  string
	// Env is appended to bento's own environment.
	Env   []string
	Stdin io.Reader
	// Stdout receives standard output; when nil it is captured into
	// Result.Stdout (unbounded: it is the command's answer, not its log).
	Stdout io.Writer
	// Stderr, when set, receives a copy of standard error as it is
	// produced (a build log, a live progress reader).
	Stderr io.Writer
	// Combined sends standard output where standard error goes: into the
	// tail and Stderr, in the order a terminal would show them. Stdout is
	// then ignored.
	Combined bool
	// TailBytes bounds the output kept for Result.Tail and the error;
	// DefaultTailBytes when zero. Negative keeps no tail: Stderr (and
	// Stdout with Combined) then reach the process as they are, an
	// *os.File as its own descriptor, so that its output does not go
	// through bento and outlives it (a Detached tick's log).
	TailBytes int
	// Grace is the time between SIGTERM and SIGKILL once ctx is done;
	// DefaultGrace when zero.
	Grace time.Duration
	// Detached runs the process to its end whatever happens to ctx: for
	// what must not be cut in half (switch-to-configuration) or must
	// outlive the caller (a tick started by the trigger server). It still
	// gets its own process group, so a signal to the caller's group does
	// not reach it. ctx's values are kept.
	Detached bool
	// Credential, when set, runs the process as that user and group
	// (dropping bento's root privileges: a health check's command).
	Credential *syscall.Credential
	// KillWithParent has the kernel SIGKILL the process when bento dies
	// (a health check nobody is left to time out). Only the process
	// itself: what it forked lives on in its group.
	KillWithParent bool

	// signal sends sig to a process group (negative pid); syscall.Kill when
	// nil. Tests record the signals through it.
	signal func(pid int, sig syscall.Signal) error
}

// Result is what a process left behind, returned whether it failed or not.
type Result struct {
	// Stdout is the captured standard output (Cmd.Stdout nil, not Combined).
	Stdout []byte
	// Tail is the end of standard error (with standard output when
	// Combined), at most TailBytes.
	Tail string
	// MaxRSS is the process's peak resident memory in bytes, 0 when unknown.
	MaxRSS int64
}

// Error is a process that could not be started or did not succeed.
type Error struct {
	Argv []string
	// ExitCode is the exit status; -1 when the process did not exit on its
	// own (not started, killed by a signal, cancelled).
	ExitCode int
	// Output is the last lines of its output, joined by "\n  ".
	Output string
	// Err is the cause: an *exec.ExitError, the start error, or ctx's
	// error when it was cancelled.
	Err      error
	notFound bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(Quote(e.Argv))
	if e.ExitCode >= 0 {
		fmt.Fprintf(&b, " exited with status %d", e.ExitCode)
	} else {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Output != "" {
		b.WriteString(": ")
		b.WriteString(e.Output)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Brief is what the process said, without its command line: from the
// last line of its output that starts with "error:" (where Nix's tools
// and switch-to-configuration put the message that matters, after their
// progress), else all of it; the exit status or why it did not start
// when it said nothing.
func (e *Error) Brief() string {
	if e.Output == "" {
		if e.ExitCode >= 0 {
			return fmt.Sprintf("exited with status %d", e.ExitCode)
		}
		return e.Err.Error()
	}
	said := e.Output
	lines := strings.Split(e.Output, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(strings.TrimSpace(lines[i]), "error:") {
			said = strings.TrimSpace(strings.Join(lines[i:], "\n"))
			break
		}
	}
	if e.ExitCode < 0 {
		// Killed or cancelled: what it printed last does not say so.
		return e.Err.Error() + ": " + said
	}
	return said
}

// Briefer is a failed command that can say itself without the command
// line it quotes (*Error, *nix.Error).
type Briefer interface {
	error
	Brief() string
}

// Is makes errors.Is(err, ErrNotFound) true for a missing program.
func (e *Error) Is(target error) bool { return target == ErrNotFound && e.notFound }

// Run runs c and waits for it. When ctx is done first (and c is not
// Detached), the process group gets SIGTERM, then SIGKILL after the grace
// period if any of it is still there; Run returns once the group is gone
// or killed, with an error wrapping ctx.Err().
func Run(ctx context.Context, c Cmd) (Result, error) {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return Result{}, errors.New("proc: no program to run")
	}
	if c.Detached {
		ctx = context.WithoutCancel(ctx)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, &Error{Argv: c.Argv, ExitCode: -1, Err: err}
	}
	grace := cmp.Or(max(c.Grace, 0), DefaultGrace)
	signal := c.signal
	if signal == nil {
		signal = syscall.Kill
	}
	cmd, tail, stdout := c.command(grace)
	if err := cmd.Start(); err != nil {
		return c.fail(ctx, cmd, err, tail, stdout)
	}
	waited := make(chan struct{})
	escalated := make(chan struct{})
	var stopped bool
	go func() {
		defer close(escalated)
		stopped = escalate(ctx, cmd.Process.Pid, grace, waited, signal)
	}()
	err := cmd.Wait()
	close(waited)
	// Whatever escalate still had to do is done before Run returns.
	<-escalated
	if err != nil || stopped {
		return c.fail(ctx, cmd, err, tail, stdout)
	}
	return result(cmd, tail, stdout), nil
}

// command prepares the process: its own group, its streams, the tail.
func (c *Cmd) command(grace time.Duration) (*exec.Cmd, *TailBuffer, *bytes.Buffer) {
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdin = c.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.Credential}
	if c.KillWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	// Something the process forked may keep its output open after it
	// exited; exec stops waiting for that after the grace period too.
	cmd.WaitDelay = grace
	tail := &TailBuffer{Max: cmp.Or(max(c.TailBytes, 0), DefaultTailBytes)}
	var errw io.Writer = tail
	switch {
	case c.TailBytes < 0:
		errw = c.Stderr
	case c.Stderr != nil:
		errw = io.MultiWriter(tail, c.Stderr)
	}
	cmd.Stderr = errw
	stdout := &bytes.Buffer{}
	switch {
	case c.Combined:
		// The same comparable writer for both streams: exec then writes
		// from one goroutine, in the order the process wrote.
		cmd.Stdout = errw
	case c.Stdout != nil:
		cmd.Stdout = c.Stdout
	default:
		cmd.Stdout = stdout
	}
	return cmd, tail, stdout
}

func result(cmd *exec.Cmd, tail *TailBuffer, stdout *bytes.Buffer) Result {
	res := Result{Stdout: stdout.Bytes(), Tail: tail.String()}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			// Linux reports ru_maxrss in KiB.
			res.MaxRSS = ru.Maxrss * 1024
		}
	}
	return res
}

// fail turns what ended the process (err nil: it exited cleanly on our
// SIGTERM, so it did not finish) into an *Error.
func (c *Cmd) fail(ctx context.Context, cmd *exec.Cmd, err error, tail *TailBuffer, stdout *bytes.Buffer) (Result, error) {
	res := result(cmd, tail, stdout)
	e := &Error{Argv: c.Argv, ExitCode: -1, Err: err}
	var exitErr *exec.ExitError
	switch {
	case cmd.ProcessState == nil && notFound(err, c.Dir):
		e.notFound = true
	case err == nil:
		e.Err = ctx.Err()
	case ctx.Err() != nil:
		e.Err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	case errors.As(err, &exitErr):
		e.ExitCode = exitErr.ExitCode()
	}
	e.Output = strings.Join(LastLines(res.Tail, errorLines), "\n  ")
	return res, e
}

// notFound tells a missing program from other start errors. A missing
// Dir fails the start with ENOENT too, indistinguishable but by looking.
func notFound(err error, dir string) bool {
	if errors.Is(err, exec.ErrNotFound) {
		return true
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if dir != "" {
		if _, derr := os.Stat(dir); derr != nil {
			return false
		}
	}
	return true
}

// escalate stops the process group pgid once ctx is done: SIGTERM, then
// SIGKILL when anything of the group is left after grace. It returns at
// once when the process ends without ctx being done, and otherwise only
// when the group is empty or killed: it leaves no timer behind. It
// reports whether it signalled the group.
func escalate(ctx context.Context, pgid int, grace time.Duration, waited <-chan struct{}, signal func(int, syscall.Signal) error) bool {
	select {
	case <-waited:
		return false
	case <-ctx.Done():
	}
	signal(-pgid, syscall.SIGTERM)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	select {
	case <-deadline.C:
		signal(-pgid, syscall.SIGKILL)
		return true
	case <-waited:
	}
	// The leader is gone; what it forked may still run in its group (a
	// builder that ignores SIGTERM). The group id cannot be reused while
	// any member, even a zombie, exists, so killing it now is safe.
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for groupRunning(pgid, signal) {
		select {
		case <-deadline.C:
			signal(-pgid, syscall.SIGKILL)
			return true
		case <-poll.C:
		}
	}
	return true
}

// groupRunning reports whether a process of group pgid is still running.
// Zombies do not count: where nothing reaps orphans (a container's init)
// they would otherwise hold the wait until the grace period ends.
func groupRunning(pgid int, signal func(int, syscall.Signal) error) bool {
	if signal(-pgid, 0) != nil {
		return false
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range entries {
		if state, group, ok := procStat(e.Name()); ok && group == pgid && state != "Z" && state != "X" {
			return true
		}
	}
	return false
}

// procStat reads the state and process group of process pid (a /proc
// entry name) from /proc/pid/stat.
func procStat(pid string) (state string, pgrp int, ok bool) {
	stat, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return "", 0, false
	}
	// pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 3 {
		return "", 0, false
	}
	pgrp, err = strconv.Atoi(f[2])
	return f[0], pgrp, err == nil
}

// Quote renders argv for a message: the program's base name, each
// argument quoted when it holds blanks or quotes, long ones shortened.
func Quote(argv []string) string {
	parts := make([]string, 0, len(argv))
	for i, a := range argv {
		if i == 0 {
			a = filepath.Base(a)
		}
		if len(a) > 120 {
			a = a[:117] + "..."
		}
		if strings.ContainsAny(a, " \t\n\"'") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// LastLines returns the last n non-empty lines of s, without terminal
// escape sequences.
func LastLines(s string, n int) []string {
	var kept []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		if strings.TrimSpace(l) != "" {
			kept = append(kept, StripANSI(l))
		}
	}
	if len(kept) > n {
		kept = kept[len(kept)-n:]
	}
	return kept
}

// StripANSI removes CSI escape sequences (colours, cursor movement).
func StripANSI(s string) string {
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
	n := len(p)
	if len(p) >= t.Max {
		t.buf = append(t.buf[:0], p[len(p)-t.Max:]...)
		return n, nil
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.Max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.Max:]...)
	}
	return n, nil
}

func (t *TailBuffer) String() string { return string(t.buf) }
