package main

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/internal/testio"
	"github.com/bento-nix/bento/status"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

func randomSecret() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "bento-cli-secret-" + hex.EncodeToString(b)
}

func inNixStore(t *testing.T, needle string) bool {
	t.Helper()
	return testio.GrepStore("/nix/store", needle)[needle] != ""
}

// A fleet that is a plain directory would be copied whole into the Nix
// store by the first evaluation: every command that evaluates refuses it
// before evaluating, so the secret never gets there.
func TestSecretsInsideAPlainFlakeAreRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hostsOf("alpha")}); err != nil {
		t.Fatal(err)
	}
	secret := randomSecret()
	p := filepath.Join(dir, "secrets", "alpha", "db")
	os.MkdirAll(filepath.Dir(p), 0o700)
	os.WriteFile(p, []byte(secret), 0o600)

	for _, args := range [][]string{
		{"hosts", "--flake", dir},
		{"deploy", "--flake", dir, "--chroot-root", filepath.Join(t.TempDir(), "root"), "--no-build"},
	} {
		stdout, stderr, code := runCLI(t, args...)
		if code != 2 || !strings.Contains(stderr, "not a git work tree, so Nix would copy the secrets into the world-readable Nix store") {
			t.Errorf("bento %s: exit %d, want 2 and the reason\n%s\n%s", args[0], code, stdout, stderr)
		}
	}
	if inNixStore(t, secret) {
		t.Fatal("the secret reached /nix/store")
	}
	// The same fleet with its secrets elsewhere evaluates.
	elsewhere := t.TempDir()
	os.Rename(filepath.Join(dir, "secrets"), filepath.Join(elsewhere, "secrets"))
	if stdout, stderr, code := runCLI(t, "hosts", "--flake", dir); code != 0 {
		t.Fatalf("bento hosts without secrets/: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

func TestDeploySecrets(t *testing.T) {
	requireRootCLI(t)
	hosts := []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true, User: "nobody", Secrets: []string{"db", "missing"}}},
		{Name: "beta", Bento: &fixture.Bento{Enable: true, User: "daemon"}},
	}
	base := t.TempDir()
	e := deployEnv{fleet: filepath.Join(base, "fleet"), root: filepath.Join(base, "chroot"), state: filepath.Join(base, "state")}
	if err := fixture.Write(e.fleet, fixture.Fleet{Hosts: hosts, Git: true, Files: map[string]string{".gitignore": "/secrets/\n"}}); err != nil {
		t.Fatal(err)
	}
	secret := randomSecret()
	setSecret := func(content string) {
		p := filepath.Join(e.fleet, "secrets", "alpha", "db")
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	setSecret(secret)

	stdout, stderr, code := runCLI(t, e.args()...)
	if code != 0 {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "host alpha declares services.bento.secrets.missing, but") {
		t.Errorf("no warning about the declared secret without a file:\n%s", stderr)
	}
	m, raw := e.manifest(t, "alpha")
	if len(m.Secrets) != 1 || m.Secrets[0].Path != "db" || m.Secrets[0].Size != int64(len(secret)) {
		t.Fatalf("manifest secrets = %+v", m.Secrets)
	}
	pub := filepath.Join(e.root, "alpha", manifest.SecretsDir, m.Version, "db")
	data, err := os.ReadFile(pub)
	if err != nil || string(data) != secret {
		t.Fatalf("published secret: %v", err)
	}
	fi, _ := os.Lstat(pub)
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != 0o400 || st.Uid != 65534 {
		t.Errorf("published secret is %v uid %d, want 0400 owned by nobody", fi.Mode(), st.Uid)
	}
	for _, f := range m.Files {
		if strings.HasPrefix(f.Path, "secrets/") || f.SHA256 == m.Secrets[0].SHA256 {
			t.Errorf("the flake tree ships %s, a secret", f.Path)
		}
	}
	objects, _ := filepath.Glob(filepath.Join(e.root, "alpha", manifest.ObjectsDir, "*", "*"))
	if len(objects) == 0 {
		t.Error("alpha's chroot holds no objects: the check below would prove nothing")
	}
	for _, o := range objects {
		if data, err := os.ReadFile(o); err == nil && string(data) == secret {
			t.Errorf("the secret's content is an object of the flake tree: %s", o)
		}
	}
	if _, err := os.Lstat(filepath.Join(e.root, "beta", manifest.SecretsDir)); err == nil {
		t.Error("beta, which has no secrets, got a secrets directory")
	}
	for _, s := range []string{stdout, stderr, raw} {
		if strings.Contains(s, secret) {
			t.Fatal("the secret's content is in deploy's output or the manifest")
		}
	}
	if inNixStore(t, secret) {
		t.Fatal("the secret reached /nix/store")
	}

	// Only the secret changes: alpha gets a new version, beta does not.
	setSecret(randomSecret())
	stdout, stderr, code = runCLI(t, e.args()...)
	if code != 0 {
		t.Fatalf("redeploy: exit %d\n%s\n%s", code, stdout, stderr)
	}
	m2, _ := e.manifest(t, "alpha")
	if m2.Version == m.Version || !strings.Contains(stdout, "alpha  published "+status.ShortVersion(m2.Version)) || !strings.Contains(stdout, "beta   unchanged") {
		t.Fatalf("a changed secret did not publish a new version of alpha only:\n%s", stdout)
	}

	// A tracked secret is refused before anything is evaluated.
	os.WriteFile(filepath.Join(e.fleet, ".gitignore"), nil, 0o644)
	gitCommit(t, e.fleet)
	stdout, stderr, code = runCLI(t, e.args()...)
	if code != 2 || !strings.Contains(stderr, "secrets/alpha/db is tracked by git") {
		t.Fatalf("tracked secret: exit %d\n%s\n%s", code, stdout, stderr)
	}
}
