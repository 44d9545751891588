package status_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/status"
)

// TestSecretErrorsFromARealAgent: a real agent that cannot install a
// secret (its owner does not exist) applies the version all the same;
// bento status shows the host up to date, names the secret, and exits 5 so
// that monitoring keyed on the exit status sees it.
func TestSecretErrorsFromARealAgent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a real sshd with per-host chroot users")
	}
	e := e2e.Start(t, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}},
		{Name: "beta", Bento: &fixture.Bento{Enable: true}},
	}})
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	if err := os.MkdirAll(filepath.Join(e.SecretsDir, "alpha"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.SecretsDir, "alpha", "api"), []byte("bento-status-test-secret-content"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := e.Host(t, "alpha")
	h.Settings["secrets"] = map[string]any{
		"api": map[string]any{"path": filepath.Join(h.Dir, "run", "api"), "owner": "no-such-user-bento", "group": "root", "mode": "0400"},
	}
	e.Publish(t)
	for _, n := range []string{"alpha", "beta"} {
		if res := e.Host(t, n).Run(t); res.ExitCode != 0 {
			t.Fatalf("%s: tick exit %d", n, res.ExitCode)
		}
	}

	stdout, stderr, code := bento(t, "status", "--json", "--no-eval", "--chroot-root", e.SSHD.Root)
	var s status.Snapshot
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("status --json: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	if code != status.ExitFailing || s.ExitCode != status.ExitFailing || s.Summary.SecretErrors != 1 || s.Summary.States[status.UpToDate] != 2 {
		t.Errorf("exit %d (document %d), summary %+v; want 5, 2 up-to-date, 1 with secret errors", code, s.ExitCode, s.Summary)
	}
	for _, r := range s.Hosts {
		if r.Host == "alpha" && (!strings.Contains(r.Message, "1 secret not installed (api: ") || !strings.Contains(r.SecretErrors["api"], "no-such-user-bento")) {
			t.Errorf("alpha: message %q, secretErrors %v", r.Message, r.SecretErrors)
		}
	}
	if strings.Contains(stdout, "bento-status-test-secret-content") {
		t.Error("status shows a secret's content")
	}
	stdout, _, _ = bento(t, "status", "--no-eval", "--chroot-root", e.SSHD.Root)
	if !strings.Contains(stdout, "2 hosts: 2 up-to-date; 1 with secrets not installed") {
		t.Errorf("table:\n%s", stdout)
	}
}
