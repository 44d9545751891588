package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/testio"
)

// The command line of a rollout: deploy --rollout publishes wave 0 only, a
// plain deploy is refused meanwhile, status and rollout status show it,
// abort ends it and deploys go on.
func TestRolloutCommands(t *testing.T) {
	requireRootCLI(t)
	hosts := hostsOf("canary", "web")
	canaryWave := 0
	hosts[0].Bento.Wave = &canaryWave
	e := newDeployEnv(t, hosts)
	if _, stderr, code := runCLI(t, e.args()...); code != 0 {
		t.Fatalf("first deploy: exit %d\n%s", code, stderr)
	}
	m, _ := e.manifest(t, "web")
	v1 := m.Version
	if err := os.WriteFile(filepath.Join(e.fleet, "lib", "extra.nix"), []byte("{ }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gitCommit(t, e.fleet)

	stdout, stderr, code := runCLI(t, e.args("--rollout", "--wave-deadline", "10m")...)
	if code != 0 || !strings.Contains(stdout, "canary") || strings.Contains(stdout, "web ") || !strings.Contains(stderr, "wave 1 (1 hosts) waits") {
		t.Fatalf("deploy --rollout: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if m, _ := e.manifest(t, "web"); m.Version != v1 {
		t.Fatalf("wave 1 published at start")
	}

	_, stderr, code = runCLI(t, e.args()...)
	if code != 2 || !strings.Contains(stderr, "a rollout is in progress") || !strings.Contains(stderr, "--supersede") {
		t.Fatalf("deploy during the rollout: exit %d\n%s", code, stderr)
	}

	if _, stderr, code := runCLI(t, e.args("--dry-run")...); code != 0 {
		t.Errorf("deploy --dry-run during the rollout: exit %d\n%s", code, stderr)
	}

	stdout, _, code = runCLI(t, "rollout", "status", "--chroot-root", e.root, "--json", "--hosts")
	var v struct {
		State string `json:"state"`
		Waves []struct {
			Wave  int    `json:"wave"`
			State string `json:"state"`
		} `json:"waves"`
		Hosts []struct {
			Host  string `json:"host"`
			State string `json:"state"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(stdout), &v); err != nil || code != 0 || v.State != "running" || len(v.Waves) != 2 || v.Waves[0].State != "published" || v.Waves[1].State != "pending" || len(v.Hosts) != 2 {
		t.Fatalf("rollout status --json: exit %d, %v\n%s", code, err, stdout)
	}
	stdout, _, _ = runCLI(t, "status", "--chroot-root", e.root, "--flake", e.fleet, "--state-dir", e.state)
	if first := strings.SplitN(stdout, "\n", 2)[0]; !strings.HasPrefix(first, "rollout ") || !strings.Contains(first, "running") {
		t.Errorf("bento status's first line %q, want the rollout", first)
	}

	// --watch shows it above each table too.
	var out, errOut testio.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.RunContext(ctx, []string{"bento", "status", "--chroot-root", e.root, "--no-eval", "--state-dir", e.state, "--watch", "--every", "1h"})
	}()
	select {
	case <-out.Seen("running since"):
	case <-time.After(30 * time.Second):
		t.Errorf("status --watch never showed the rollout:\n%s", out.String())
	}
	cancel()
	<-done
	if first := strings.SplitN(out.String(), "\n", 2)[0]; !strings.HasPrefix(first, "rollout ") {
		t.Errorf("status --watch's first line %q, want the rollout", first)
	}

	stdout, stderr, code = runCLI(t, "rollout", "step", "--chroot-root", e.root)
	if code != 0 || !strings.Contains(stdout, "wait: ") {
		t.Fatalf("rollout step: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "rollout", "abort", "--chroot-root", e.root)
	if code != 0 || !strings.Contains(stdout, "aborted") {
		t.Fatalf("rollout abort: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if m, _ := e.manifest(t, "canary"); m.Version != v1 {
		t.Errorf("canary after abort at %s, want %s", m.Version, v1)
	}
	if _, stderr, code := runCLI(t, e.args()...); code != 0 {
		t.Fatalf("deploy after abort: exit %d\n%s", code, stderr)
	}
}

func TestRolloutFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--quorum", "0"}, "--quorum"},
		{[]string{"--quorum", "150%"}, "--quorum"},
		{[]string{"--wave-deadline", "soon"}, "--wave-deadline"},
		{[]string{"--wave-tag", "canary"}, "TAG=N"},
		{[]string{"--wave-tag", "canary=-1"}, "TAG=N"},
		{[]string{"--dry-run"}, "dry-run"},
	} {
		_, stderr, code := runCLI(t, append([]string{"rollout", "start", "--flake", t.TempDir(), "--chroot-root", t.TempDir()}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("%q: exit %d, %s", c.args, code, stderr)
		}
	}
	for in, want := range map[string]float64{"90%": 0.9, "0.5": 0.5, "100%": 1} {
		if got, err := parseQuorum(in); err != nil || got != want {
			t.Errorf("parseQuorum(%q) = %v, %v", in, got, err)
		}
	}
	stdout, _, code := runCLI(t, "rollout", "status", "--chroot-root", t.TempDir())
	if code != 0 || !strings.Contains(stdout, "no rollout recorded") {
		t.Errorf("rollout status without one: exit %d %q", code, stdout)
	}
	_, stderr, code := runCLI(t, "rollout", "step", "--chroot-root", t.TempDir())
	if code != 2 || !strings.Contains(stderr, "no rollout recorded") {
		t.Errorf("rollout step without one: exit %d %q", code, stderr)
	}
}
