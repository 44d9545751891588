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

// Serve answers trigger requests on ln until ctx ends, one tick at a time
// (requests that arrive during a tick wait for it). A client that goes
// away does not stop its tick: a switch is never cut short by a Ctrl-C on
// a watching terminal.
func Serve(ctx context.Context, ln net.Listener, tick Tick) error {
	return ServeAll(ctx, []net.Listener{ln}, tick)
}

// ServeAll is Serve on several listeners at once (a unix socket and a
// loopback port), still one tick at a time across all of them. When one
// listener fails, the others stop too and the error is returned.
func ServeAll(ctx context.Context, lns []net.Listener, tick Tick) error {
	if len(lns) == 0 {
		return errors.New("trigger: no address to listen on")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var running sync.Mutex
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() {
			err := serveOne(ctx, ln, tick, &running)
			cancel()
			errs <- err
		}()
	}
	var all []error
	for range lns {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

func serveOne(ctx context.Context, ln net.Listener, tick Tick, running *sync.Mutex) error {
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
			if err != nil || line != request {
				fmt.Fprintf(c, "bento trigger: unknown request %q\n%s2 bad request\n", strings.TrimSpace(line), trailer)
				return
			}
			c.SetReadDeadline(time.Time{})
			w := &dropWriter{w: c}
			running.Lock()
			err = tick(ctx, w)
			running.Unlock()
			code, msg := 0, "ok"
			if err != nil {
				code, msg = 1, strings.ReplaceAll(err.Error(), "\n", " ")
			}
			fmt.Fprintf(w, "%s%d %s\n", trailer, code, msg)
		}()
	}
}

// dropWriter stops writing after the first error (the client left) and
// never reports one, so the tick goes on.
type dropWriter struct {
	mu   sync.Mutex
	w    io.Writer
	gone bool
}

func (d *dropWriter) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.gone {
		if _, err := d.w.Write(p); err != nil {
			d.gone = true
		}
	}
	return len(p), nil
}

// ErrFailed is returned (wrapped) by Request when the tick failed.
var ErrFailed = errors.New("the tick failed")

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
			if code == "0" {
				return nil
			}
			return fmt.Errorf("%w: %s", ErrFailed, msg)
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
