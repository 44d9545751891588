package mirror_test

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
)

// bento mirror push and pull-reports as an operator runs them: exit 0 when
// every host made it, 1 when one failed on a mirror (its row says why),
// 2 for what no retry fixes.
func TestMirrorCommand(t *testing.T) {
	e := e2e.Start(t, fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}, {Name: "beta", Bento: &fixture.Bento{Enable: true}}}})
	e.Host(t, "alpha")
	e.Host(t, "beta")
	e.Publish(t)
	m := startMirror(t, e, "alpha") // beta has no chroot there
	dest := m.dest(t).String()
	run := func(args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(e2e.Bento(t), args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String()
	}
	common := []string{"--chroot-root", e.SSHD.Root, "--known-hosts", m.sshd.KnownHostsFile, "--identity", m.pusher.KeyFile}
	for _, tc := range []struct {
		name string
		args []string
		code int
		has  []string
	}{
		{"no mirror", []string{"mirror", "push"}, 2, []string{"name at least one mirror"}},
		{"not a destination", append(append([]string{"mirror", "push"}, common...), "sftp://x/y"), 2, []string{"the scheme must be ssh://"}},
		{"no known hosts", []string{"mirror", "push", "--known-hosts", "/nonexistent", dest}, 2, []string{"--known-hosts pins the mirrors' host keys"}},
		{"one host has no chroot on the mirror", append(append([]string{"mirror", "push"}, common...), dest), 1,
			[]string{"alpha", "pushed", "beta", "failed", "no chroot", "configure the mirror as a bento server with the same hosts", "1 of 2 host copies failed"}},
		{"only alpha", append(append([]string{"mirror", "push", "--host", "alpha"}, common...), dest), 0, []string{"alpha", "unchanged"}},
		{"pull-reports", append(append([]string{"mirror", "pull-reports", "--host", "alpha"}, common...), dest), 0, []string{"no report on the mirror"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d:\n%s", code, tc.code, out)
			}
			for _, s := range tc.has {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
		})
	}

	code, out := run(append(append([]string{"mirror", "push", "--json", "--host", "alpha"}, common...), dest)...)
	var doc struct {
		Hosts []map[string]any `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 || len(doc.Hosts) != 1 {
		t.Fatalf("--json: exit %d, %v:\n%s", code, err, out)
	}
	h := doc.Hosts[0]
	if h["host"] != "alpha" || h["state"] != "unchanged" || h["mirror"] != dest || h["files"] != 0.0 {
		t.Errorf("--json row %v", h)
	}
}
