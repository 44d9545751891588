package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// duplexConn counts the bytes of a connection both ways.
type duplexConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *duplexConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *duplexConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// What live progress adds to the bytes of a tick, through a real sshd:
// nothing on an idle tick; on an update tick that lasts long enough (its
// switch is held) for a stage and its log to be uploaded, about 2 to 2.8
// kB (a log chunk and the record, each a few SFTP requests): measured 8.4
// to 9.8 % for a fleet of 40 files, 12 to 14 % for the smallest tree there is,
// whose update tick is a mere 16 kB. The bounds (13 %, 17 %) leave room
// for noise and catch a regression.
func TestLiveProgressBytes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files int
		limit float64
	}{
		{"smallest tree", 0, 17},
		{"40-file tree", 40, 13},
	} {
		t.Run(tc.name, func(t *testing.T) { liveProgressBytes(t, tc.files, tc.limit) })
	}
}

func liveProgressBytes(t *testing.T, files int, limit float64) {
	f := fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}}, Files: map[string]string{}}
	for i := range files {
		f.Files[fmt.Sprintf("modules/m%02d.nix", i)] = fmt.Sprintf("{ lib, ... }: { options.m%02d = lib.mkOption { default = %d; }; }\n", i, i)
	}
	env := e2e.Start(t, f)
	env.Publish(t)
	h := env.Host(t, "alpha")
	for _, kv := range h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(h.ConfigFile(t)); err != nil {
		t.Fatal(err)
	}
	progressFile := filepath.Join(env.Chroot("alpha"), manifest.ProgressFile)
	var last string
	var uploads int
	tick := func(noProgress bool, want string) int64 {
		t.Helper()
		var n atomic.Int64
		var out strings.Builder
		o, err := agent.Run(context.Background(), cfg, agent.Options{
			Out: &out, Nix: &nix.Runner{}, AgentVersion: "test", NoProgress: noProgress,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &duplexConn{Conn: c, n: &n}, nil
			},
		})
		if err != nil || o.Action != want {
			t.Fatalf("tick: %s, %v, want %s\n%s", o.Action, err, want, out.String())
		}
		last, uploads = out.String(), o.ProgressUploads
		return n.Load()
	}
	// The switch of an update waits on a FIFO (the fixture's record):
	// with live progress it goes on once the server shows "switching", so
	// the tick uploads what a long one does; without, at once.
	fifo := filepath.Join(t.TempDir(), "switch-fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	update := func(gen string, noProgress bool) int64 {
		t.Helper()
		env.Update(t, "alpha", func(x *fixture.Host) { x.Generation = gen })
		if files > 0 {
			env.Fleet.Files["modules/m00.nix"] = "# generation " + gen + "\n" + f.Files["modules/m00.nix"]
			env.WriteFleet(t, env.Fleet)
		}
		env.Publish(t)
		t.Setenv("BENTO_FIXTURE_RECORD", fifo)
		released := make(chan error, 1)
		go func() {
			if !noProgress {
				if err := waitForStage(progressFile, manifest.ProgressSwitching); err != nil {
					released <- err
					// Unblock the switch all the same: the tick must end.
				}
			}
			f, err := os.Open(fifo)
			if err == nil {
				io.Copy(io.Discard, f)
				f.Close()
			}
			released <- err
		}()
		n := tick(noProgress, agent.ActionApplied)
		if err := <-released; err != nil {
			t.Fatal(err)
		}
		return n
	}

	tick(true, agent.ActionApplied)
	tick(true, agent.ActionUpToDate) // the first idle tick uploads a new report, later ones touch it
	os.Remove(progressFile)
	idleWithout := tick(true, agent.ActionUpToDate)
	idleWith := tick(false, agent.ActionUpToDate)
	if _, err := os.Stat(progressFile); !os.IsNotExist(err) {
		t.Errorf("an idle tick wrote %s", manifest.ProgressFile)
	}

	// What one uploaded stage costs, over three rounds (a tick's bytes
	// vary by a few hundred): on a loaded machine the stage after the
	// held switch may last long enough (2 s) to be uploaded too, which is
	// right but another measurement, so such a round counts only against
	// perUpload.
	const perUpload = 3500
	var without, with int64
	measured := 0
	for _, gen := range []int{2, 4, 6} {
		os.Remove(progressFile)
		n := update(fmt.Sprint(gen), true)
		if _, err := os.Stat(progressFile); !os.IsNotExist(err) {
			t.Fatalf("a tick without live progress wrote %s", manifest.ProgressFile)
		}
		m := update(fmt.Sprint(gen+1), false)
		data, err := os.ReadFile(progressFile)
		if err != nil {
			t.Fatalf("the update tick with live progress uploaded none: %v\n%s", err, last)
		}
		p, err := manifest.ParseProgress(data, "alpha")
		if err != nil || p.Stage != manifest.ProgressSwitching && p.Stage != manifest.ProgressConfirming {
			t.Fatalf("progress after the tick: %+v, %v; want the switching it was held in (or the confirming after it)", p, err)
		}
		t.Logf("update tick (held in its switch): %d bytes without live progress, %d with %d uploaded stage(s) (%+.1f %%)", n, m, uploads, float64(m-n)/float64(n)*100)
		if uploads < 1 {
			t.Fatalf("the update tick uploaded no progress record")
		}
		if m-n > int64(uploads)*perUpload {
			t.Errorf("%d uploaded stage(s) cost %d bytes, over %d each", uploads, m-n, perUpload)
		}
		if uploads == 1 {
			without, with, measured = without+n, with+m, measured+1
		}
	}
	t.Logf("idle tick: %d bytes without live progress, %d with", idleWithout, idleWith)
	if measured > 0 {
		extra := float64(with-without) / float64(without) * 100
		t.Logf("one uploaded stage, %d round(s): %d → %d bytes (%+.1f %%)", measured, without, with, extra)
		if extra > limit {
			t.Errorf("live progress adds %.1f %% to an update tick (%d → %d bytes), over %.0f %%", extra, without, with, limit)
		}
	}
	// Idle ticks differ only by noise (the times in the report): a
	// progress upload would be hundreds of bytes.
	if d := idleWith - idleWithout; d > 64 || d < -64 {
		t.Errorf("idle tick: %d bytes without live progress, %d with: want the same", idleWithout, idleWith)
	}
}

// waitForStage waits until the progress file names stage.
func waitForStage(path string, stage manifest.ProgressStage) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if data, err := os.ReadFile(path); err == nil {
			if p, err := manifest.ParseProgress(data, "alpha"); err == nil && p.Stage == stage {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s never said %s", path, stage)
}
