package trigger

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// One server on a unix socket and a loopback port: both run ticks, one
// at a time across the two.
func TestServeAllListensOnEveryAddressOneTickAtATime(t *testing.T) {
	var lns []net.Listener
	var addrs []Addr
	for _, s := range []string{"unix:" + filepath.Join(t.TempDir(), "trigger.sock"), "127.0.0.1:0"} {
		a, err := ParseAddr(s)
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
		lns, addrs = append(lns, ln), append(addrs, a)
	}
	var active, most, n atomic.Int32
	started := make(chan int32, 2)
	release := make(chan struct{})
	tick := func(ctx context.Context, out io.Writer) error {
		if a := active.Add(1); a > most.Load() {
			most.Store(a)
		}
		defer active.Add(-1)
		i := n.Add(1)
		started <- i
		if i == 1 {
			<-release
		}
		io.WriteString(out, "tick\n")
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Tick: tick}).ServeAll(ctx, lns) }()

	results := make(chan error, 2)
	var outs [2]bytes.Buffer
	go func() { results <- Request(context.Background(), addrs[0], &outs[0]) }()
	<-started
	go func() { results <- Request(context.Background(), addrs[1], &outs[1]) }()
	// The second request must wait while the first tick runs.
	select {
	case <-started:
		t.Error("a request on the second address started a tick while the first one ran")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	for range 2 {
		if err := <-results; err != nil {
			t.Errorf("request: %v", err)
		}
	}
	for i, o := range outs {
		if !strings.Contains(o.String(), "tick") {
			t.Errorf("address %s: output %q", addrs[i], o.String())
		}
	}
	if most.Load() != 1 || n.Load() != 2 {
		t.Errorf("%d ticks, at most %d at once; want 2, one at a time", n.Load(), most.Load())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeAll: %v", err)
	}
	// Both listeners are closed.
	for _, a := range addrs {
		if err := Request(context.Background(), a, io.Discard); err == nil {
			t.Errorf("%s still answers after ServeAll returned", a)
		}
	}
}
