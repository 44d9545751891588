package builder

import (
	"bytes"
	"io"
	"strings"
	"sync"
)

// Phase is what a host's build is doing now.
type Phase string

const (
	// PhaseEvaluating: nix evaluates the configuration and instantiates it.
	PhaseEvaluating Phase = "evaluating"
	// PhaseWaiting: evaluated, waiting for a build slot.
	PhaseWaiting Phase = "waiting"
	// PhaseBuilding: nix builds (or fetches) the system.
	PhaseBuilding Phase = "building"
	// PhaseCopying: the closure is being signed and copied to the cache.
	PhaseCopying Phase = "copying"
)

// Progress receives what happens during a Build, for a live display or a
// log. Build calls Begin first and End last, from the calling goroutine;
// Phase, Log and Done come from the hosts' goroutines, concurrently for
// different hosts, so implementations must be safe for concurrent use.
type Progress interface {
	// Begin announces every host of the run, in order.
	Begin(hosts []string)
	// Phase says that a host entered a phase; the first call for a host
	// means its build started.
	Phase(host string, p Phase)
	// Log is one line of Nix's output for a host, without the newline.
	Log(host, line string)
	// Done is a host's final result (also for hosts cancelled before they
	// started).
	Done(r Result)
	// End comes after the last Done.
	End()
}

type silent struct{}

func (silent) Begin([]string)      {}
func (silent) Phase(string, Phase) {}
func (silent) Log(string, string)  {}
func (silent) Done(Result)         {}
func (silent) End()                {}

// lineWriter copies Nix's standard error to the host's log file and hands
// complete lines to the progress display.
type lineWriter struct {
	mu      sync.Mutex
	w       io.Writer
	host    string
	prog    Progress
	partial []byte
}

func newLineWriter(w io.Writer, host string, prog Progress) *lineWriter {
	return &lineWriter{w: w, host: host, prog: prog}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.w.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
	// A line longer than this is not worth holding for a display.
	if len(l.partial) > 64<<10 {
		l.line(string(l.partial))
		l.partial = l.partial[:0]
	}
	return n, err
}

// Flush ends a last line that had no newline, in the file and for the
// display, so that what bento appends to the log starts on its own line.
func (l *lineWriter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.w.Write([]byte{'\n'})
		l.line(string(l.partial))
		l.partial = l.partial[:0]
	}
}

func (l *lineWriter) line(s string) {
	s = strings.TrimRight(s, "\r")
	if strings.TrimSpace(s) == "" {
		return
	}
	l.prog.Log(l.host, s)
}
