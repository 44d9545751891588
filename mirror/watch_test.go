package mirror_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/testio"
	"github.com/bento-nix/bento/nix"
)

// Watch mode fails over too: with the primary down it watches the mirror,
// and a publication pushed there is applied.
func TestWatchFailsOverToTheMirror(t *testing.T) {
	e := e2e.Start(t, oneHostFleet())
	h := e.Host(t, "alpha")
	v1 := e.Publish(t)["alpha"]
	m := startMirror(t, e, "alpha")
	push(t, e, m)
	useServers(e, h, m)
	h.Settings["serverOrder"] = "ordered"
	e.SSHD.Stop()
	for _, kv := range h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(h.ConfigFile(t)); err != nil {
		t.Fatal(err)
	}
	ticks := make(chan agent.Outcome, 10)
	var out testio.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- agent.Watch(ctx, cfg, agent.WatchOptions{
			Every:     20 * time.Millisecond,
			Out:       &out,
			Reconnect: backoff.Policy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond},
			Tick: func(ctx context.Context) error {
				o, err := agent.Run(ctx, cfg, agent.Options{Nix: &nix.Runner{}, AgentVersion: "test"})
				ticks <- o
				return err
			},
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	wait := func(want string) agent.Outcome {
		t.Helper()
		select {
		case o := <-ticks:
			if o.Action != want {
				t.Fatalf("tick did %s, want %s\n%s", o.Action, want, out.String())
			}
			return o
		case <-time.After(60 * time.Second):
			t.Fatalf("no tick after 60s\n%s", out.String())
		}
		return agent.Outcome{}
	}
	if o := wait(agent.ActionApplied); h.Current(t) != v1.Built || o.Report.Server != m.sshd.Addr {
		t.Fatalf("the watch's first tick: current %s, server %s", h.Current(t), o.Report.Server)
	}
	// Published on the primary's disk, pushed to the mirror (the primary's
	// sshd stays down): the watch on the mirror sees it.
	e.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	e.WriteFleet(t, e.Fleet)
	v2 := e.Publish(t)["alpha"]
	push(t, e, m)
	wait(agent.ActionApplied)
	if h.Current(t) != v2.Built {
		t.Errorf("after the push to the mirror the host runs %s, want %s", h.Current(t), v2.Built)
	}
}
