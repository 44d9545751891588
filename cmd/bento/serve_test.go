package main

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/serve"
	"github.com/bento-nix/bento/status"
)

// bento serve refuses, with exit 2 and a message naming the fix, what it
// must not do: listen beyond loopback without --allow-remote, take hosts.
func TestServeUsage(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--no-eval", "--chroot-root", root, "--listen", "0.0.0.0:0"}, "--allow-remote"},
		{[]string{"serve", "--no-eval", "--chroot-root", root, "--listen", ":0"}, "ssh -L"},
		{[]string{"serve", "--no-eval", "--chroot-root", root, "web-1"}, "takes no arguments"},
		{[]string{"serve", "--no-eval", "--chroot-root", root, "--every", "0s"}, "--every must be positive"},
	} {
		_, stderr, code := runCLI(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("bento %s: exit %d, %q; want exit %d naming %q", strings.Join(tc.args, " "), code, stderr, exitUsage, tc.want)
		}
	}
}

// The fleet page shows a rollout started by bento deploy --rollout: read
// by rollout.Load, its phase and waves.
func TestServeShowsTheRollout(t *testing.T) {
	requireRootCLI(t)
	hosts := hostsOf("canary", "web")
	canaryWave := 0
	hosts[0].Bento.Wave = &canaryWave
	e := newDeployEnv(t, hosts)
	if ro, err := serveRollout(e.root); ro != nil || err != nil {
		t.Fatalf("before any rollout: %+v, %v", ro, err)
	}
	if _, stderr, code := runCLI(t, e.args()...); code != 0 {
		t.Fatalf("first deploy: exit %d\n%s", code, stderr)
	}
	if err := os.WriteFile(filepath.Join(e.fleet, "lib", "extra.nix"), []byte("{ }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gitCommit(t, e.fleet)
	if _, stderr, code := runCLI(t, e.args("--rollout")...); code != 0 {
		t.Fatalf("deploy --rollout: exit %d\n%s", code, stderr)
	}
	ro, err := serveRollout(e.root)
	if err != nil || ro == nil || ro.Phase != "running" || len(ro.Waves) != 2 || ro.Waves[0].State != "published" || ro.Waves[0].Hosts != 1 || ro.Waves[1].State != "pending" || ro.Current != 0 {
		t.Fatalf("the rollout as serve reads it: %+v, %v", ro, err)
	}
	s := serve.New(serve.Options{Status: status.Options{Root: e.root}, Rollout: func() (*serve.Rollout, error) { return serveRollout(e.root) }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	body := rec.Body.String()
	for _, want := range []string{`id="rollout"`, ro.ID, `<span class="st-work">running</span>`, `<li class="current">wave 0: 1 hosts, <span class="st-work">published</span>`, "wave 1: 1 hosts"} {
		if !strings.Contains(body, want) {
			t.Errorf("the fleet page lacks %q:\n%s", want, body)
		}
	}
}
