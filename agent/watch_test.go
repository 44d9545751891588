package agent_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/testio"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

// The watch runs a tick at start, none while nothing changes, one per
// publication (even two within one second), and keeps doing so across a
// server restart.
func TestWatchAppliesEachPublication(t *testing.T) {
	f := fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n"},
	}
	env := e2e.Start(t, f)
	v1 := env.Publish(t)["alpha"]
	h := env.Host(t, "alpha")
	for _, kv := range h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(h.ConfigFile(t)); err != nil {
		t.Fatal(err)
	}

	ticks := make(chan string, 10)
	looks := make(chan bool, 1000)
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
				ticks <- o.Action
				return err
			},
			Changed: func(changed bool) { looks <- changed },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v", err)
		}
	}()
	waitTick := func(want string) {
		t.Helper()
		select {
		case got := <-ticks:
			if got != want {
				t.Fatalf("tick did %s, want %s\n%s", got, want, out.String())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("no tick after 60s\n%s", out.String())
		}
	}
	// quiet waits for n looks that saw no change, and fails on a tick.
	quiet := func(n int) {
		t.Helper()
		for n > 0 {
			select {
			case changed := <-looks:
				if !changed {
					n--
				}
			case a := <-ticks:
				t.Fatalf("a tick (%s) with nothing published\n%s", a, out.String())
			case <-time.After(60 * time.Second):
				t.Fatalf("the watch stopped looking\n%s", out.String())
			}
		}
	}

	waitTick("applied")
	if h.Current(t) != v1.Built {
		t.Fatalf("not switched to %s", v1.Built)
	}
	quiet(5)

	// Two publications back to back (well within one second).
	for i, content := range []string{"{ a = 2; }\n", "{ a = 3; }\n"} {
		env.Fleet.Files["modules/a.nix"] = content
		env.WriteFleet(t, env.Fleet)
		v := env.Publish(t)["alpha"]
		waitTick("applied")
		if got := h.Current(t); got != v.Built {
			t.Fatalf("publication %d: running %s, want %s", i+2, got, v.Built)
		}
	}
	quiet(3)

	// The server goes away and comes back: the watch reconnects.
	env.SSHD.Restart(t)
	env.Fleet.Files["modules/a.nix"] = "{ a = 4; }\n"
	env.WriteFleet(t, env.Fleet)
	v4 := env.Publish(t)["alpha"]
	waitTick("applied")
	if got := h.Current(t); got != v4.Built {
		t.Fatalf("after the restart: running %s, want %s", got, v4.Built)
	}
	if !strings.Contains(out.String(), "reconnecting") {
		t.Errorf("no reconnection noted:\n%s", out.String())
	}
}
