package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// TestRunInProcess drives agent.Run itself (the e2e tests run the binary)
// so that the race detector sees the tick: apply, idle, one-file update.
func TestRunInProcess(t *testing.T) {
	f := fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n", "modules/b.nix": "{ b = 1; }\n"},
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
	var out strings.Builder
	run := func() agent.Outcome {
		t.Helper()
		out.Reset()
		o, err := agent.Run(context.Background(), cfg, agent.Options{Out: &out, Nix: &nix.Runner{}, AgentVersion: "test"})
		if err != nil {
			t.Fatalf("tick: %v\n%s", err, out.String())
		}
		return o
	}

	o := run()
	if o.Action != agent.ActionApplied || o.Fetched != 5 || o.Report == nil || o.Report.AgentVersion != "test" || h.Current(t) != v1.Built {
		t.Fatalf("first tick: %+v, current %s", o, h.Current(t))
	}
	o = run()
	if o.Action != agent.ActionUpToDate || o.Fetched != 0 || o.Report.Result != manifest.ResultUnchanged {
		t.Errorf("idle tick: %+v", o)
	}
	env.Fleet.Files["modules/b.nix"] = "{ b = 2; }\n"
	env.WriteFleet(t, env.Fleet)
	v2 := env.Publish(t)["alpha"]
	o = run()
	if o.Action != agent.ActionApplied || o.Fetched != 1 || o.Report.AppliedVersion != v2.Version {
		t.Errorf("one-file update: %+v", o)
	}
	if !strings.Contains(out.String(), "1 of 5 objects downloaded") {
		t.Errorf("output:\n%s", out.String())
	}

	// Old logs go beyond logsKept, and so do leftovers of a killed upload.
	cfg.LogsKept = 2
	leftover := filepath.Join(env.Chroot("alpha"), manifest.LogsDir, ".x.log.gz.tmp-0badc0de")
	if err := os.WriteFile(leftover, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	env.Fleet.Files["modules/b.nix"] = "{ b = 3; }\n"
	env.WriteFleet(t, env.Fleet)
	v3 := env.Publish(t)["alpha"]
	o = run()
	logs := h.Logs(t)
	if len(logs) != 2 || !strings.HasPrefix(logs[0], v2.Version) && !strings.HasPrefix(logs[1], v2.Version) || o.Report.Log == "" {
		t.Errorf("logs on the server %v, want the newest two (%s, %s)", logs, v2.Version, v3.Version)
	}
	for _, l := range logs {
		if strings.HasPrefix(l, v1.Version) || strings.HasPrefix(l, ".") {
			t.Errorf("log %s should have been removed", l)
		}
	}
}
