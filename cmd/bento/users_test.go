package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The real bento deploy refuses two hosts sharing a user, publishes the
// third, and exits 1; bento check names them too.
func TestDeployRefusesASharedUser(t *testing.T) {
	requireRootCLI(t)
	hosts := hostsOf("alpha", "beta", "gamma")
	hosts[1].Bento.User = hosts[0].Bento.User
	e := newDeployEnv(t, hosts)
	stdout, stderr, code := runCLI(t, e.args()...)
	if code != 1 {
		t.Fatalf("deploy: exit %d, want 1\n%s\n%s", code, stdout, stderr)
	}
	for _, w := range []string{`host alpha: services.bento.user "nobody" is also the user of host beta`, `host beta: services.bento.user "nobody" is also the user of host alpha`} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	for _, h := range []string{"alpha", "beta"} {
		if _, err := os.Stat(filepath.Join(e.root, h, "manifest.json")); !os.IsNotExist(err) {
			t.Errorf("%s was published with a shared user: %v", h, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.root, "gamma", "manifest.json")); err != nil {
		t.Errorf("gamma was not published: %v", err)
	}
	_, stderr, code = runCLI(t, "check", "--flake", e.fleet)
	if code != 1 || !strings.Contains(stderr, "is also the user of host beta") {
		t.Errorf("check: exit %d\n%s", code, stderr)
	}
}
