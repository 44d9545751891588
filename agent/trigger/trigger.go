// Package trigger lets a local user run an agent tick now and watch it: a
// server listens on a unix socket or a loopback TCP address (never on all
// interfaces), runs one tick per request and streams its output back,
// ending with the tick's exit status.
//
// The protocol is line-based: the client sends "tick\n"; the server sends
// the tick's output as it comes, then one line "\x00exit N message\n".
package trigger

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	request = "tick\n"
	trailer = "\x00exit "
)

// Addr is a parsed trigger address.
type Addr struct {
	Network string // "unix" or "tcp"
	Address string
}

func (a Addr) String() string {
	if a.Network == "unix" {
		return "unix:" + a.Address
	}
	return a.Address
}

// ParseAddr reads "unix:/run/bento/trigger.sock", "/run/bento/trigger.sock"
// or "127.0.0.1:51337" / "[::1]:51337" / "localhost:51337". Any address
// that is not loopback is refused: the trigger runs a tick as root.
func ParseAddr(s string) (Addr, error) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok || strings.HasPrefix(s, "/") {
		if !ok {
			p = s
		}
		if !strings.HasPrefix(p, "/") {
			return Addr{}, fmt.Errorf("trigger address %q: a unix socket needs an absolute path", s)
		}
		return Addr{Network: "unix", Address: p}, nil
	}
	return parseTCPAddr(s)
}

// parseTCPAddr reads a loopback host:port.
func parseTCPAddr(s string) (Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("trigger address %q: want unix:/path/to/socket or 127.0.0.1:PORT", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return Addr{}, fmt.Errorf("trigger address %q: bad port %q", s, port)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return Addr{}, fmt.Errorf("trigger address %q: the trigger listens only on a unix socket or a loopback address (127.0.0.1, ::1), never on %q", s, host)
	}
	return Addr{Network: "tcp", Address: net.JoinHostPort(host, port)}, nil
}

// Listen opens the trigger address. A unix socket gets mode 0600 (root
// only); a stale socket file from a dead server is replaced, a live one
// is an error.
func Listen(a Addr) (net.Listener, error) {
	if a.Network != "unix" {
		ln, err := net.Listen("tcp", a.Address)
		if err != nil {
			return nil, fmt.Errorf("trigger: %w", err)
		}
		return ln, nil
	}
	if fi, err := os.Lstat(a.Address); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("trigger: %s exists and is not a socket: refusing to replace it", a.Address)
		}
		if c, err := net.DialTimeout("unix", a.Address, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("trigger: another server already listens on %s", a.Address)
		}
		os.Remove(a.Address)
	}
	ln, err := net.Listen("unix", a.Address)
	if err != nil {
		return nil, fmt.Errorf("trigger: %w", err)
	}
	if err := os.Chmod(a.Address, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("trigger: %w", err)
	}
	return ln, nil
}

// Tick runs one tick, writing its output to out.
type Tick func(ctx context.Context, out io.Writer) error

// DefaultMaxClients bounds the clients waiting for or watching a tick.
const DefaultMaxClients = 16

// Trailer codes after "\x00exit ".
const (
	codeOK       = 0
	codeFailed   = 1 // the tick ran and failed
	codeBad      = 2 // not a request
	codeRefused  = 3 // the peer may not trigger
	codeBusy     = 4 // too many clients already wait
	codeStopping = 5 // the server stopped before the tick started
	codeDetached = 6 // the server stopped while the tick ran; the tick goes on
)

// Server answers trigger requests.
type Server struct {
	Tick Tick
	// AllowedGroups returns the groups whose members, besides root, may
	// trigger a tick. It is called for every connection (the module's
	// configuration can change under a running server).
	AllowedGroups func() []string
	// MaxClients bounds the allowed clients waiting for or watching a
	// tick at once; more are refused until one leaves
	// (DefaultMaxClients when 0).
	MaxClients int
	// Log receives refused connections (nil: discarded).
	Log *slog.Logger
	// Detached says that a tick outlives the server: it is a process of
	// its own (bento's are, see runTickProcess in cmd/bento). A server
	// that stops then does not wait for the running tick: it tells the
	// tick's clients that the tick goes on without it, and returns. So
	// `systemctl restart bento-trigger` (a switch that upgrades bento
	// does it, with KillMode=process) takes a moment, not the rest of the
	// tick: a tick that is itself running that switch would otherwise
	// wait for the restart while the restart waits for it.
	Detached bool

	// queued, when set (by tests), is called each time a client joins
	// the next tick.
	queued func()
}

// batch is one tick and the clients watching it: every request that
// arrives while a tick runs joins the next batch, so they share one tick.
type batch struct {
	mu   sync.Mutex
	outs []*dropWriter
	done chan struct{}
	err  error
	ran  bool
	// detached: the server stopped while the tick ran (Server.Detached).
	detached bool
}

// Write sends the tick's output to every client of the batch.
func (b *batch) Write(p []byte) (int, error) {
	b.mu.Lock()
	outs := b.outs
	b.mu.Unlock()
	for _, w := range outs {
		w.Write(p)
	}
	return len(p), nil
}

// queue is the state shared by the listeners of one server.
type queue struct {
	mu       sync.Mutex
	next     *batch // the batch the next tick runs; nil when none waits
	clients  int
	stopping bool
	wake     chan struct{}
}

// ServeAll answers trigger requests on every listener (a unix socket and
// a loopback port) until ctx ends, one tick at a time across all of
// them. Requests that arrive while a tick runs are merged into the next
// tick. When one listener fails, the others stop too and the error is
// returned. A client that goes away does not stop its tick: a switch is
// never cut short by a Ctrl-C on a watching terminal. When ctx ends, no
// waiting tick starts, and the running one is waited for unless the
// server is Detached.
func (s *Server) ServeAll(ctx context.Context, lns []net.Listener) error {
	if len(lns) == 0 {
		return errors.New("trigger: no address to listen on")
	}
	if s.MaxClients <= 0 {
		s.MaxClients = DefaultMaxClients
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.AllowedGroups == nil {
		s.AllowedGroups = func() []string { return nil }
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := &queue{wake: make(chan struct{}, 1)}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		s.run(ctx, q)
	}()
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() {
			err := s.serveOne(ctx, ln, q)
			cancel()
			errs <- err
		}()
	}
	var all []error
	for range lns {
		all = append(all, <-errs)
	}
	<-ran
	return errors.Join(all...)
}

// run runs the queued batches one after the other until ctx ends; then
// it ends the waiting batch without running it.
func (s *Server) run(ctx context.Context, q *queue) {
	for {
		select {
		case <-ctx.Done():
			q.stop()
			q.endNext()
			return
		case <-q.wake:
		}
		b := q.take()
		if b == nil {
			continue
		}
		if ctx.Err() != nil { // stopped while the previous tick ran
			q.stop()
			close(b.done)
			return
		}
		if !s.runBatch(ctx, q, b) {
			return
		}
	}
}

// runBatch runs b's tick and ends b. false means that the server stopped
// while a Detached tick ran.
func (s *Server) runBatch(ctx context.Context, q *queue, b *batch) bool {
	if !s.Detached {
		b.err = s.Tick(ctx, b)
		b.ran = true
		close(b.done)
		return true
	}
	ticked := make(chan error, 1)
	go func() { ticked <- s.Tick(ctx, b) }()
	select {
	case err := <-ticked:
		b.err = err
		b.ran = true
		close(b.done)
		return true
	case <-ctx.Done():
		// The tick's process goes on; this server's copy of its
		// output ends with the server.
		b.detached = true
		q.stop()
		close(b.done)
		q.endNext()
		return false
	}
}

// take removes the waiting batch from q and returns it (nil if none).
func (q *queue) take() *batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := q.next
	q.next = nil
	return b
}

// stop makes q refuse new clients.
func (q *queue) stop() {
	q.mu.Lock()
	q.stopping = true
	q.mu.Unlock()
}

// endNext ends the waiting batch, if any, without running it.
func (q *queue) endNext() {
	if b := q.take(); b != nil {
		close(b.done)
	}
}

func (s *Server) serveOne(ctx context.Context, ln net.Listener, q *queue) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("trigger: %w", err)
		}
		// Who connected is known before the client sends a byte, so a
		// refused client costs one table scan and one short write here,
		// and never holds a goroutine or a place in the queue.
		if ok, why := s.admit(c); !ok {
			s.Log.Warn("trigger: connection refused", "listener", ln.Addr().String(), "reason", why)
			c.SetWriteDeadline(time.Now().Add(time.Second))
			fmt.Fprintf(c, "%s%d %s\n", trailer, codeRefused, why)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			s.handle(c, q)
		}()
	}
}

func (s *Server) admit(c net.Conn) (bool, string) {
	uid, err := peerUID(c)
	if err != nil {
		return false, "cannot tell which user connected: " + strings.ReplaceAll(err.Error(), "\n", " ")
	}
	return authorize(uid, s.AllowedGroups())
}

func (s *Server) handle(c net.Conn, q *queue) {
	end := func(code int, msg string) {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(c, "%s%d %s\n", trailer, code, msg)
	}
	if !q.enter(s.MaxClients) {
		end(codeBusy, fmt.Sprintf("%d clients already wait for or watch a tick; try again when it ends", s.MaxClients))
		return
	}
	defer q.leave()

	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil || line != request {
		fmt.Fprintf(c, "bento trigger: unknown request %q\n", strings.TrimSpace(line))
		end(codeBad, "bad request")
		return
	}
	c.SetReadDeadline(time.Time{})

	b := q.join(&dropWriter{c: c})
	if b == nil {
		end(codeStopping, "the trigger server is stopping: no tick was run")
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
	if s.queued != nil {
		s.queued()
	}
	<-b.done
	end(b.outcome())
}

// enter counts a client in, unless limit already wait or watch.
func (q *queue) enter(limit int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.clients >= limit {
		return false
	}
	q.clients++
	return true
}

// leave counts a client out.
func (q *queue) leave() {
	q.mu.Lock()
	q.clients--
	q.mu.Unlock()
}

// join adds w to the clients of the next tick and returns its batch; nil
// when the server is stopping.
func (q *queue) join(w *dropWriter) *batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopping {
		return nil
	}
	b := q.next
	if b == nil {
		b = &batch{done: make(chan struct{})}
		q.next = b
	}
	b.mu.Lock()
	b.outs = append(b.outs, w)
	b.mu.Unlock()
	return b
}

// outcome is the trailer code and message of an ended batch.
func (b *batch) outcome() (int, string) {
	switch {
	case b.detached:
		return codeDetached, "the trigger server stopped (restarted?) while the tick ran: the tick goes on without it; bento status on the server shows its outcome once it reports"
	case !b.ran:
		return codeStopping, "the trigger server stopped before the tick started: no tick was run"
	case b.err != nil:
		return codeFailed, strings.ReplaceAll(b.err.Error(), "\n", " ")
	default:
		return codeOK, "ok"
	}
}

// dropWriter stops writing after the first error (the client left, or
// stopped reading for writeStall) and never reports one, so the tick goes
// on.
type dropWriter struct {
	mu   sync.Mutex
	c    net.Conn
	gone bool
}

// writeStall is how long a client may leave the tick's output unread
// before it is dropped: the tick does not wait for it any longer.
const writeStall = 30 * time.Second

func (d *dropWriter) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.gone {
		d.c.SetWriteDeadline(time.Now().Add(writeStall))
		if _, err := d.c.Write(p); err != nil {
			d.gone = true
		}
	}
	return len(p), nil
}

// ErrFailed is returned (wrapped) by Request when the tick failed.
var ErrFailed = errors.New("the tick failed")

// ErrDetached is returned (wrapped) by Request when the server stopped
// while the tick ran: the tick goes on, its outcome unknown here.
var ErrDetached = errors.New("detached from the tick")

// ErrRefused is returned (wrapped) by Request when the server did not run
// a tick for this client: not allowed, too many waiting, stopping.
var ErrRefused = errors.New("refused")

// Request asks the server at a for a tick and copies its output to out.
// It returns nil when the tick succeeded, an error wrapping ErrFailed when
// it failed, and another error when the server could not be asked.
func Request(ctx context.Context, a Addr, out io.Writer) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, a.Network, a.Address)
	if err != nil {
		return fmt.Errorf("trigger %s: %w (is bento agent trigger-server running?)", a, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := io.WriteString(c, request); err != nil {
		return fmt.Errorf("trigger %s: %w", a, err)
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if rest, ok := strings.CutPrefix(line, trailer); ok {
			code, msg, _ := strings.Cut(strings.TrimSpace(rest), " ")
			switch code {
			case "0":
				return nil
			case "1":
				return fmt.Errorf("%w: %s", ErrFailed, msg)
			case "6":
				return fmt.Errorf("trigger %s: %w: %s", a, ErrDetached, msg)
			}
			return fmt.Errorf("trigger %s: %w: %s", a, ErrRefused, msg)
		}
		io.WriteString(out, line)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("trigger %s: the server closed the connection before the tick ended", a)
		}
	}
}
