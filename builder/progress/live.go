package progress

import (
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/bento-nix/bento/builder"
)

// ANSI colours, used only when the caller allows them (a terminal, no
// NO_COLOR, no --no-color).
const (
	green = "\x1b[32m"
	red   = "\x1b[31m"
	dim   = "\x1b[2m"
	reset = "\x1b[0m"
)

// Live redraws, on a terminal, one line per host that is building or
// copying (phase, elapsed time, Nix's last line) above a counter that also
// counts the hosts being evaluated or waiting, and prints a permanent line
// as each host ends.
type Live struct {
	color bool
	opts  []mpb.ContainerOption

	// mu guards hosts and is held while calling into mpb; the decorators,
	// which mpb runs while it renders, must never take it (cmu and each
	// host's own mutex serve them), or rendering and adding a bar could
	// wait for each other.
	mu    sync.Mutex
	p     *mpb.Progress
	total *mpb.Bar
	hosts map[string]*liveHost
	width int

	cmu sync.Mutex
	c   counts
}

type liveHost struct {
	bar   *mpb.Bar
	mu    sync.Mutex
	phase builder.Phase
	line  string
}

func (h *liveHost) set(phase builder.Phase, line string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if phase != "" {
		h.phase = phase
	}
	if line != "" {
		h.line = line
	}
}

func (h *liveHost) get() (builder.Phase, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.phase, h.line
}

// NewLive draws on w, which should be a terminal. Extra mpb options are
// for tests (mpb.WithAutoRefresh, a fixed width).
func NewLive(w io.Writer, color bool, opts ...mpb.ContainerOption) *Live {
	return &Live{color: color, opts: append([]mpb.ContainerOption{mpb.WithOutput(w), mpb.WithRefreshRate(200 * time.Millisecond)}, opts...), hosts: map[string]*liveHost{}}
}

func (l *Live) paint(colour, s string) string {
	if !l.color {
		return s
	}
	return colour + s + reset
}

func (l *Live) Begin(hosts []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range hosts {
		l.width = max(l.width, len(h))
	}
	l.cmu.Lock()
	l.c.total = len(hosts)
	l.cmu.Unlock()
	l.p = mpb.New(l.opts...)
	// Lowest priority: the counter stays below the hosts' lines.
	l.total = l.p.New(int64(len(hosts)), mpb.BarStyle().Lbound("[").Rbound("]"),
		mpb.BarPriority(math.MaxInt32),
		mpb.BarWidth(30),
		mpb.PrependDecorators(decor.Name("build", decor.WC{W: l.width + 2, C: decor.DindentRight})),
		mpb.AppendDecorators(
			decor.Any(func(decor.Statistics) string {
				l.cmu.Lock()
				defer l.cmu.Unlock()
				return l.c.String()
			}),
			decor.Elapsed(decor.ET_STYLE_GO, decor.WC{W: 8}),
		),
	)
}

func (l *Live) Phase(host string, ph builder.Phase) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.hosts[host]
	if !ok {
		h = &liveHost{}
		l.hosts[host] = h
		l.cmu.Lock()
		l.c.running++
		l.cmu.Unlock()
	}
	old, _ := h.get()
	h.set(ph, "")
	l.cmu.Lock()
	l.c.waiting += b2i(ph == builder.PhaseWaiting) - b2i(old == builder.PhaseWaiting)
	l.c.evaluating += b2i(ph == builder.PhaseEvaluating) - b2i(old == builder.PhaseEvaluating)
	l.cmu.Unlock()
	// Hosts being evaluated (a whole chunk at once) or waiting for a build
	// slot are only counted: a line each would fill the terminal with
	// hundreds of hosts that have nothing to show yet.
	if h.bar == nil && ph != builder.PhaseEvaluating && ph != builder.PhaseWaiting {
		l.addBar(host, h)
	}
}

// addBar gives a host its line; l.mu is held.
func (l *Live) addBar(host string, h *liveHost) {
	start := time.Now()
	h.bar = l.p.New(1, mpb.NopStyle(),
		mpb.BarRemoveOnComplete(),
		mpb.BarFillerTrim(),
		mpb.PrependDecorators(
			decor.Name(host, decor.WC{W: l.width + 2, C: decor.DindentRight}),
			decor.Any(func(decor.Statistics) string {
				ph, _ := h.get()
				return string(ph)
			}, decor.WC{W: 12, C: decor.DindentRight}),
			decor.Any(func(decor.Statistics) string {
				return FormatDuration(time.Since(start).Truncate(100 * time.Millisecond))
			}, decor.WC{W: 8, C: decor.DindentRight}),
			decor.Any(func(decor.Statistics) string {
				_, line := h.get()
				return l.paint(dim, line)
			}),
		),
	)
}

func (l *Live) Log(host, line string) {
	l.mu.Lock()
	h, ok := l.hosts[host]
	l.mu.Unlock()
	if ok {
		h.set("", line)
	}
}

func (l *Live) Done(r builder.Result) {
	l.mu.Lock()
	h, started := l.hosts[r.Host]
	delete(l.hosts, r.Host)
	width := l.width
	l.mu.Unlock()
	l.cmu.Lock()
	if started {
		l.c.running--
		ph, _ := h.get()
		l.c.waiting -= b2i(ph == builder.PhaseWaiting)
		l.c.evaluating -= b2i(ph == builder.PhaseEvaluating)
	}
	l.c.done++
	if !r.OK() {
		l.c.failed++
	}
	l.cmu.Unlock()

	mark, colour := "✓", green
	if !r.OK() {
		mark, colour = "✗", red
	}
	if r.Status == builder.StatusCancelled {
		mark, colour = "-", dim
	}
	// Printed above the bars, where it stays once they are gone.
	fmt.Fprintf(l.p, "%s %-*s %s\n", l.paint(colour, mark), width, r.Host, Describe(r))
	if started && h.bar != nil {
		h.bar.SetTotal(-1, true)
	}
	l.total.Increment()
}

func (l *Live) End() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.hosts {
		if h.bar != nil {
			h.bar.Abort(true)
		}
	}
	l.total.SetTotal(-1, true)
	l.p.Wait()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
