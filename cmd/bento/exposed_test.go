package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
)

// bento deploy warns about a secret file others can read, and publishes it.
func TestDeployWarnsAboutAReadableSecret(t *testing.T) {
	requireRootCLI(t)
	hosts := []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true, User: "nobody", Secrets: []string{"db"}}}}
	base := t.TempDir()
	e := deployEnv{fleet: filepath.Join(base, "fleet"), root: filepath.Join(base, "chroot"), state: filepath.Join(base, "state")}
	if err := fixture.Write(e.fleet, fixture.Fleet{Hosts: hosts, Git: true, Files: map[string]string{".gitignore": "/secrets/\n"}}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.fleet, "secrets", "alpha", "db")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(randomSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runCLI(t, e.args()...)
	if code != 0 {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if want := "secret alpha/db: " + p + " is readable by its group and every user (mode 0644): chmod 0600 " + p; !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if m, _ := e.manifest(t, "alpha"); len(m.Secrets) != 1 {
		t.Errorf("the readable secret was not published: %+v", m.Secrets)
	}
}
