package serve

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// DefaultListen is where bento serve listens unless told otherwise: the
// loopback interface, reached from afar through ssh -L.
const DefaultListen = "127.0.0.1:8470"

// ErrRemote is returned (wrapped) for a listen address beyond loopback
// without allowRemote: the page has no authentication.
var ErrRemote = errors.New("not a loopback address")

// Listen opens addr: "host:port", or "unix:/path" for a Unix socket (a
// socket left by a previous run is replaced; its mode is 0660, so that
// the group of the directory decides who may connect). A host other than
// a loopback address (127.0.0.0/8, ::1, localhost) needs allowRemote.
func Listen(ctx context.Context, addr string, allowRemote bool) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return listenUnix(ctx, addr, path)
	}
	return listenTCP(ctx, addr, allowRemote)
}

// listenUnix opens the Unix socket at path (addr is as given).
func listenUnix(ctx context.Context, addr, path string) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("listen %q: give the socket's path, as unix:/run/bento/serve.sock", addr)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: a file that is no socket is in the way: remove it or choose another path", path)
		}
		os.Remove(path)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	return l, nil
}

// listenTCP opens host:port, beyond loopback only with allowRemote.
func listenTCP(ctx context.Context, addr string, allowRemote bool) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w (give host:port, as %s, or unix:/path)", addr, err, DefaultListen)
	}
	if !allowRemote && !loopback(host) {
		return nil, fmt.Errorf("listen %s: %w: the page has no authentication, so anyone who reaches it sees the whole fleet; "+
			"listen on 127.0.0.1 and use ssh -L, or pass --allow-remote to accept the risk (docs/serve.md)", addr, ErrRemote)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Serve serves s on l until ctx is done, then shuts down
// (bounded by grace). The watch must run (Run) alongside.
func (s *Server) Serve(ctx context.Context, l net.Listener, grace time.Duration) error {
	hs := &http.Server{
		Handler: s.Handler(),
		// No ReadTimeout: its deadline stays on the connection and would
		// end every event stream after it. Requests are GETs whose bodies
		// nothing reads.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	// Event streams end with ctx (BaseContext); the rest get grace.
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-errc
	return nil
}
