// Package progress shows a running build: a live display with one line per
// running host and a counter when the output is a terminal, plain
// timestamped lines otherwise (CI logs, pipes, files).
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/internal/timespan"
)

// counts is the done/failed/running tally both displays print.
type counts struct {
	total, done, failed int
	// running counts the hosts started and not done, waiting those of
	// them evaluated and waiting for a build slot, evaluating those being
	// evaluated (the live display counts them; plain lines name them).
	running, waiting, evaluating int
}

func (c counts) String() string {
	s := fmt.Sprintf("%d/%d done", c.done, c.total)
	if c.failed > 0 {
		s += fmt.Sprintf(", %d failed", c.failed)
	}
	if c.evaluating > 0 {
		s += fmt.Sprintf(", %d evaluating", c.evaluating)
	}
	if n := c.running - c.waiting - c.evaluating; n > 0 {
		s += fmt.Sprintf(", %d running", n)
	}
	if c.waiting > 0 {
		s += fmt.Sprintf(", %d waiting", c.waiting)
	}
	return s
}

// Plain prints one timestamped line per event that matters: a host
// starts, starts building or copying, and ends. Nix's own lines go to the
// per-host log files, not here.
type Plain struct {
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu      sync.Mutex
	w       io.Writer
	started map[string]bool
	c       counts
}

// NewPlain writes plain progress lines to w.
func NewPlain(w io.Writer) *Plain { return &Plain{w: w, started: map[string]bool{}} }

func (p *Plain) printf(format string, args ...any) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	fmt.Fprintf(p.w, "%s "+format+"\n", append([]any{now().Format("15:04:05")}, args...)...)
}

func (p *Plain) Begin(hosts []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.c.total = len(hosts)
	p.printf("building %d %s", len(hosts), plural(len(hosts), "host", "hosts"))
}

func (p *Plain) Phase(host string, ph builder.Phase) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started[host] {
		p.started[host] = true
		p.c.running++
	}
	if ph == builder.PhaseWaiting {
		// Only the moments that take time are worth a line.
		return
	}
	p.printf("%s: %s", host, ph)
}

func (p *Plain) Log(string, string) {}

func (p *Plain) Done(r builder.Result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started[r.Host] {
		p.c.running--
	}
	p.c.done++
	if !r.OK() {
		p.c.failed++
	}
	p.printf("[%d/%d] %s: %s", p.c.done, p.c.total, r.Host, Describe(r))
}

func (p *Plain) End() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.printf("finished: %s", p.c)
}

// Describe is a one-line account of a result, for progress lines.
func Describe(r builder.Result) string {
	d := FormatDuration(r.Duration)
	switch {
	case r.Status == builder.StatusBuilt && r.CopyErr != nil:
		return fmt.Sprintf("built in %s %s, but %s", d, r.OutPath, firstLine(r.Reason()))
	case r.Status == builder.StatusBuilt && r.Unchanged:
		return fmt.Sprintf("unchanged, not realised again %s", r.OutPath)
	case r.Status == builder.StatusBuilt:
		return fmt.Sprintf("built in %s %s", d, r.OutPath)
	case r.Status == builder.StatusDryRun:
		return fmt.Sprintf("evaluated in %s %s", d, r.DrvPath)
	case r.Status == builder.StatusCancelled:
		return "cancelled"
	default:
		return fmt.Sprintf("FAILED after %s: %s", d, firstLine(r.Reason()))
	}
}

// FormatDuration shows a build's time as every duration is shown
// (timespan.Human): 850ms, 1.2s, 12s, 2m05s, 1h02m.
func FormatDuration(d time.Duration) string { return timespan.Human(d) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
