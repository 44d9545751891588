package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"time"

	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/manifest"
)

// WatchOptions configure Watch.
type WatchOptions struct {
	// Every is the pause between two looks at manifest.json; 5s when zero.
	Every time.Duration
	// Tick runs one tick (the NixOS module's watch runs "bento agent run"
	// as a child process, as the trigger server does, so that a switch
	// restarting the watch never cuts a tick short).
	Tick func(ctx context.Context) error
	// Out receives one line per change seen and per reconnection; nil
	// discards.
	Out io.Writer
	// Dial replaces the TCP dialer (benchmarks count bytes with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Reconnect spaces reconnection attempts (full jitter); 1s doubling
	// to 5 min when zero.
	Reconnect backoff.Policy
	// Changed, when set, is called after each look with whether it saw a
	// change (tests wait on it instead of on time).
	Changed func(changed bool)
}

// Watch keeps one SSH connection to the server open and looks at the
// host's manifest.json every few seconds (one SFTP stat: no handshake, a
// few hundred bytes), running a tick whenever its size or modification
// time changed, and once at the start. It returns when ctx ends, without
// waiting for a running tick (Tick must then outlive it: the command runs
// each tick as a child process).
//
// The publisher gives every new manifest a modification time at least one
// second after the previous one's, so two publications within the same
// second (SFTP times are whole seconds) are still two changes. Anything
// the watch misses, the timer's ticks still catch: the watch only makes
// updates faster, never the only way to get them.
func Watch(ctx context.Context, cfg Config, o WatchOptions) error {
	endpoints, err := completeConfig(&cfg)
	if err != nil {
		return err
	}
	signer, err := transport.LoadSigner(cfg.IdentityFile)
	if err != nil {
		return &ConfigError{err}
	}
	if o.Tick == nil {
		return errors.New("watch: no tick to run")
	}
	o.setDefaults()
	topts := transport.Options{
		Signer:         signer,
		ConnectTimeout: time.Duration(cfg.ConnectTimeout),
		OpTimeout:      time.Duration(cfg.OperationTimeout),
		Attempts:       1,
		Dial:           o.Dial,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		PostQuantum:    cfg.PostQuantum,
	}
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	w := &watcher{o: o, first: true}
	failures := 0
	for {
		// The order of the ticks: the server the last tick reached
		// holds the publication the next one reads.
		c, _, err := transport.DialAny(ctx, topts, orderServers(endpoints, cfg.ServerOrder, lastServer(cfg.StateDir)))
		if err != nil {
			var again bool
			if failures, again = w.backOff(ctx, err, failures, rnd); !again {
				return nil
			}
			continue
		}
		if failures > 0 {
			fmt.Fprintf(o.Out, "bento: watch: connected to %s again\n", c.Addr())
		}
		failures = 0
		err = w.watch(ctx, c)
		c.Close()
		if ctx.Err() != nil {
			return nil
		}
		failures++
		fmt.Fprintf(o.Out, "bento: watch: connection lost (%v); reconnecting\n", err)
	}
}

// setDefaults fills in the pause, output and reconnection backoff left
// unset.
func (o *WatchOptions) setDefaults() {
	if o.Every <= 0 {
		o.Every = 5 * time.Second
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Reconnect.Initial <= 0 {
		o.Reconnect = backoff.Policy{Initial: time.Second, Max: 5 * time.Minute}
	}
}

// backOff waits before the next connection attempt after a failed one
// (err, the failures-th in a row): it returns the failures counted and
// false when ctx ended.
func (w *watcher) backOff(ctx context.Context, err error, failures int, rnd *rand.Rand) (int, bool) {
	if ctx.Err() != nil {
		return failures, false
	}
	if transport.Permanent(err) {
		// A wrong host key or a refused client key does not heal
		// by retrying fast; the timer's ticks report it.
		failures = max(failures, 8)
	}
	failures++
	wait := w.o.Reconnect.Jittered(failures, rnd)
	fmt.Fprintf(w.o.Out, "bento: watch: %v; reconnecting in %s\n", err, wait.Round(time.Second))
	return failures, sleep(ctx, wait)
}

// watcher remembers what manifest.json looked like at the last look.
type watcher struct {
	o     WatchOptions
	first bool
	last  manifestStat
}

type manifestStat struct {
	exists bool
	size   int64
	mtime  time.Time
}

// watch looks at the manifest until the connection fails or ctx ends.
func (w *watcher) watch(ctx context.Context, c *transport.Conn) error {
	for {
		now, err := statManifest(ctx, c)
		if err != nil {
			return err
		}
		changed := w.first || now != w.last
		if changed {
			if !w.first {
				fmt.Fprintf(w.o.Out, "bento: watch: %s changed: running a tick\n", manifest.ManifestFile)
			}
			w.first, w.last = false, now
			if err := w.runTick(ctx); err != nil {
				return err
			}
		}
		if w.o.Changed != nil {
			w.o.Changed(changed)
		}
		if !sleep(ctx, w.o.Every) {
			return ctx.Err()
		}
	}
}

// statManifest is the size and modification time of manifest.json; a
// missing one is the zero manifestStat.
func statManifest(ctx context.Context, c *transport.Conn) (manifestStat, error) {
	fi, err := c.Stat(ctx, manifest.ManifestFile)
	switch {
	case err == nil:
		return manifestStat{exists: true, size: fi.Size(), mtime: fi.ModTime()}, nil
	case transport.IsNotExist(err):
		return manifestStat{}, nil
	}
	return manifestStat{}, err
}

// runTick runs one tick and says how it ended; the error is ctx's when
// the watch stops first.
func (w *watcher) runTick(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- w.o.Tick(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			fmt.Fprintf(w.o.Out, "bento: watch: tick failed: %v\n", err)
		} else {
			fmt.Fprintf(w.o.Out, "bento: watch: tick finished\n")
		}
		return nil
	case <-ctx.Done():
		// The tick is a process of its own: a switch that
		// restarts the watch must not wait for the tick that
		// runs the switch, which waits for the restart.
		fmt.Fprintf(w.o.Out, "bento: watch: stopping; the running tick goes on without the watch\n")
		return ctx.Err()
	}
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
