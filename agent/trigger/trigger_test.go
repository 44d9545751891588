package trigger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseAddr(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{"unix:/run/bento/trigger.sock", "unix:/run/bento/trigger.sock", ""},
		{"/run/bento/trigger.sock", "unix:/run/bento/trigger.sock", ""},
		{"127.0.0.1:51337", "127.0.0.1:51337", ""},
		{"localhost:51337", "127.0.0.1:51337", ""},
		{"[::1]:51337", "[::1]:51337", ""},
		{"0.0.0.0:51337", "", "never on \"0.0.0.0\""},
		{":51337", "", "never on \"\""},
		{"192.168.1.5:51337", "", "only on a unix socket or a loopback"},
		{"unix:relative.sock", "", "absolute path"},
		{"127.0.0.1:99999", "", "bad port"},
		{"nonsense", "", "want unix:"},
	}
	for _, tc := range cases {
		a, err := ParseAddr(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseAddr(%q) error = %v, want one containing %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || a.String() != tc.want {
			t.Errorf("ParseAddr(%q) = %v, %v; want %s", tc.in, a, err, tc.want)
		}
	}
}

// serve starts a trigger server on addr whose ticks run tick.
func serve(t *testing.T, addr string, tick Tick) Addr {
	t.Helper()
	return serveWith(t, &Server{Tick: tick}, addr)[0]
}

// serveWith starts srv on every address (a TCP port 0 gets a free one)
// and stops it at cleanup.
func serveWith(t *testing.T, srv *Server, addrs ...string) []Addr {
	t.Helper()
	var lns []net.Listener
	var out []Addr
	for _, addr := range addrs {
		a, err := ParseAddr(addr)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := Listen(a)
		if err != nil {
			t.Fatal(err)
		}
		if a.Network == "tcp" {
			a.Address = ln.Addr().String()
		}
		lns, out = append(lns, ln), append(out, a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.ServeAll(ctx, lns) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeAll: %v", err)
		}
	})
	return out
}

func TestTriggerStreamsOutputAndExitStatus(t *testing.T) {
	var n atomic.Int32
	tick := func(ctx context.Context, out io.Writer) error {
		i := n.Add(1)
		fmt.Fprintf(out, "bento: tick %d starts\n", i)
		fmt.Fprintf(out, "building…\n")
		if i == 2 {
			return errors.New("host alpha: build: boom")
		}
		return nil
	}
	for _, addr := range []string{"unix:" + filepath.Join(t.TempDir(), "trigger.sock"), "127.0.0.1:0"} {
		t.Run(addr, func(t *testing.T) {
			n.Store(0)
			a := serve(t, addr, tick)
			var out bytes.Buffer
			if err := Request(context.Background(), a, &out); err != nil {
				t.Fatalf("first tick: %v", err)
			}
			if out.String() != "bento: tick 1 starts\nbuilding…\n" {
				t.Errorf("streamed output %q", out.String())
			}
			out.Reset()
			err := Request(context.Background(), a, &out)
			if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "build: boom") {
				t.Errorf("failed tick: error %v, want ErrFailed quoting the tick's error", err)
			}
			if !strings.Contains(out.String(), "tick 2 starts") {
				t.Errorf("failed tick output %q", out.String())
			}
		})
	}
}

func TestUnixSocketIsPrivateAndStaleOneReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trigger.sock")
	// A socket file left by a server that died.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	a := serve(t, "unix:"+path, func(context.Context, io.Writer) error { return nil })
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600: only root may trigger", fi.Mode().Perm())
	}
	if _, err := Listen(a); err == nil || !strings.Contains(err.Error(), "already listens") {
		t.Errorf("second server on a live socket: %v, want a refusal", err)
	}
	regular := filepath.Join(t.TempDir(), "file")
	os.WriteFile(regular, nil, 0o644)
	if _, err := Listen(Addr{Network: "unix", Address: regular}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("listening over a regular file: %v, want a refusal", err)
	}
}

func TestClientLeavingDoesNotStopTheTick(t *testing.T) {
	started := make(chan struct{})
	finished := make(chan error, 1)
	tick := func(ctx context.Context, out io.Writer) error {
		close(started)
		for i := 0; i < 50; i++ {
			if _, err := fmt.Fprintf(out, "line %d\n", i); err != nil {
				finished <- err
				return err
			}
			time.Sleep(2 * time.Millisecond)
		}
		finished <- ctx.Err()
		return nil
	}
	a := serve(t, "127.0.0.1:0", tick)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	err := Request(ctx, a, io.Discard)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled client: %v", err)
	}
	select {
	case err := <-finished:
		if err != nil {
			t.Errorf("the tick saw %v after its client left; it must run to the end", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the tick did not finish")
	}
}

func TestBadRequestIsRefused(t *testing.T) {
	ran := false
	a := serve(t, "127.0.0.1:0", func(context.Context, io.Writer) error { ran = true; return nil })
	c, err := net.Dial("tcp", a.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.0\n")
	reply, _ := io.ReadAll(c)
	if !strings.Contains(string(reply), "unknown request") || ran {
		t.Errorf("reply %q, tick ran: %v", reply, ran)
	}
}

// A Detached server (bento's: each tick is a process of its own) stops at
// once while a tick runs, telling the tick's client that the tick goes on;
// an attached one waits for the tick.
func TestStopWhileATickRuns(t *testing.T) {
	for _, detached := range []bool{true, false} {
		t.Run(fmt.Sprintf("detached=%v", detached), func(t *testing.T) {
			started, release, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
			srv := &Server{Detached: detached, Tick: func(ctx context.Context, out io.Writer) error {
				fmt.Fprintln(out, "bento: switching")
				close(started)
				<-release
				close(finished)
				return nil
			}}
			a, err := ParseAddr("unix:" + filepath.Join(t.TempDir(), "trigger.sock"))
			if err != nil {
				t.Fatal(err)
			}
			ln, err := Listen(a)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan error, 1)
			go func() { served <- srv.ServeAll(ctx, []net.Listener{ln}) }()
			requested := make(chan error, 1)
			var out bytes.Buffer
			go func() { requested <- Request(context.Background(), a, &out) }()
			<-started
			cancel()
			if !detached {
				close(release)
				if err := <-served; err != nil {
					t.Fatal(err)
				}
				select {
				case <-finished:
				default:
					t.Fatal("an attached server returned before its tick finished")
				}
				if err := <-requested; err != nil {
					t.Errorf("the client of a tick that finished: %v", err)
				}
				return
			}
			if err := <-served; err != nil {
				t.Fatalf("ServeAll: %v", err)
			}
			err = <-requested
			if !errors.Is(err, ErrDetached) || !strings.Contains(err.Error(), "the tick goes on without it") {
				t.Errorf("client: %v, want ErrDetached saying the tick goes on", err)
			}
			if !strings.Contains(out.String(), "bento: switching") {
				t.Errorf("client output %q", out.String())
			}
			select {
			case <-finished:
				t.Fatal("the tick finished before it was released")
			default:
			}
			close(release)
			<-finished
		})
	}
}
