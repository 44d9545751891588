// Package serve is bento serve: the fleet's status on a read-only web
// page, its JSON (GET /api/status, the document of bento status --json)
// and its Prometheus metrics (GET /metrics).
//
// One status watch (status.Watch: fsnotify on the chroots, and a redraw
// every Options.Every so ages stay true) feeds every client: each
// collection replaces the server's snapshot and wakes the clients' event
// streams (server-sent events), whose pages then fetch their own view again.
// No client makes the server read a chroot; a request renders the
// snapshot in memory.
//
// Everything a host wrote reaches the page through html/template (escaped
// for its context) after status made it terminal-safe; the page loads one
// embedded script and one stylesheet under a Content-Security-Policy that
// allows nothing else, and works without the script as a page that
// refreshes itself.
package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/bento-nix/bento/status"
)

// DefaultEvery is how often the page is brought up to date without a
// report arriving (ages move on).
const DefaultEvery = 15 * time.Second

// DefaultMaxStreams bounds the event streams open at once: each holds a
// connection and a goroutine.
const DefaultMaxStreams = 256

// Options say what bento serve shows.
type Options struct {
	// Status says what to collect; its Now and Sort are the server's.
	Status status.Options
	// Every is the longest time between two collections (DefaultEvery
	// when zero).
	Every time.Duration
	// Clock reads the time (time.Now when nil).
	Clock func() time.Time
	// Log receives the server's errors (slog.Default when nil).
	Log *slog.Logger
	// MaxStreams bounds the open event streams (DefaultMaxStreams when zero).
	MaxStreams int
	// LogTailBytes is how much of a host's latest log its page shows, at
	// most (DefaultLogTail when zero).
	LogTailBytes int
	// History gives the host pages their timeline and /api/history its
	// document; nil shows none.
	History History
	// Rollout reads the current (or last) rollout for the fleet page
	// (package rollout's Load, through an adapter in cmd/bento); nil, or
	// a nil view, shows none.
	Rollout func() (*Rollout, error)
}

// Rollout is what the fleet page shows of a rollout: its phase and why,
// and each wave with its verdict.
type Rollout struct {
	ID string
	// Phase is the rollout's word ("running", "paused", "halted", "done" …).
	Phase  string
	Reason string
	// Current is the index in Waves of the wave being judged.
	Current int
	Waves   []RolloutWave
	Since   time.Time
}

// RolloutWave is one wave of a rollout.
type RolloutWave struct {
	Number  int
	Hosts   int
	State   string
	Verdict string
}

// History is the server's record of what happened (package history,
// through an adapter in cmd/bento that says each event as bento history
// does): the host page shows a host's timeline, /api/history serves the
// document of bento history --json.
type History interface {
	// Timeline lists a host's newest events, at most limit, newest first.
	Timeline(ctx context.Context, host string, limit int) ([]Event, error)
	// JSON writes the document bento history --json prints for these
	// hosts (none: the fleet) since that time (zero: all kept), at most
	// limit events (0: all).
	JSON(ctx context.Context, w io.Writer, hosts []string, since time.Time, limit int) error
}

// Event is one line of a host's timeline.
type Event struct {
	At time.Time
	// Kind is the history's ("published", "report", "rollout" …).
	Kind string
	// Text says what happened, host-written parts included (the page makes
	// it terminal-safe and escapes it).
	Text string
	// State is a status state when the event has one ("" else): the page
	// colours it as status does.
	State string
}

// Server serves one chroot root.
type Server struct {
	o   Options
	hub hub
	// answers are the pages and documents rendered from the hub's snapshot.
	answers answers
	// streams is a semaphore of the open event streams.
	streams chan struct{}
	// done is closed when Run returns: open event streams end.
	done     chan struct{}
	doneOnce sync.Once
}

// New returns a server; Run must run for it to show anything.
func New(o Options) *Server {
	if o.Every <= 0 {
		o.Every = DefaultEvery
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.LogTailBytes <= 0 {
		o.LogTailBytes = DefaultLogTail
	}
	o.Status.Sort = "state"
	s := &Server{o: o, streams: make(chan struct{}, o.MaxStreams), done: make(chan struct{})}
	s.hub.init()
	return s
}

// Run watches the chroot root until ctx is done, replacing the snapshot
// the pages show after every change. It returns nil when ctx is done and
// an error for bad options.
func (s *Server) Run(ctx context.Context) error {
	defer s.doneOnce.Do(func() { close(s.done) })
	err := status.Watch(ctx, s.o.Status, s.o.Every, s.o.Clock, func(snap *status.Snapshot, err error) error {
		if err != nil {
			s.o.Log.Warn("serve: collecting the status", "err", err)
		}
		s.hub.set(snap, err)
		return nil
	})
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// hub holds the latest snapshot and wakes whoever waits for the next.
type hub struct {
	mu   sync.Mutex
	snap *status.Snapshot
	err  error
	// gen counts the snapshots: a page knows which one it shows.
	gen uint64
	// changed is closed (and replaced) when a snapshot replaces this one.
	changed chan struct{}
}

func (h *hub) init() { h.changed = make(chan struct{}) }

func (h *hub) set(snap *status.Snapshot, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.snap, h.err = snap, err
	h.gen++
	close(h.changed)
	h.changed = make(chan struct{})
}

// view is one snapshot as the hub held it.
type view struct {
	snap    *status.Snapshot
	err     error
	gen     uint64
	changed <-chan struct{}
}

func (h *hub) get() view {
	h.mu.Lock()
	defer h.mu.Unlock()
	return view{h.snap, h.err, h.gen, h.changed}
}

// errNotReady is the answer before the first collection finished.
var errNotReady = errors.New("bento serve is reading the chroots for the first time")

// current waits (bounded by ctx) for the first snapshot and returns the latest.
func (s *Server) current(ctx context.Context) (view, error) {
	for {
		v := s.hub.get()
		if v.gen > 0 {
			return v, nil
		}
		select {
		case <-v.changed:
		case <-ctx.Done():
			return v, errNotReady
		case <-s.done:
			return v, errNotReady
		}
	}
}
