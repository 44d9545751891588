package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
)

// A fleet where one host's attribute name differs from its hostName
// (services.bento.host left at its default) and one has a dotted
// attribute name, which no NixOS hostName can equal. Every command that
// would publish or list them refuses them with both names and the fix.
func mismatchFleet() []fixture.Host {
	return []fixture.Host{
		{Name: "web-1", HostName: "web", Bento: &fixture.Bento{Enable: true, Host: "web"}},
		{Name: "pi.home", HostName: "pi", Bento: &fixture.Bento{Enable: true, Host: "pi"}},
		{Name: "db-1", HostName: "db", Bento: &fixture.Bento{Enable: true, Host: "db-1"}},
	}
}

const (
	fixWeb = `host web-1: services.bento.host is "web", but bento publishes this host as nixosConfigurations.web-1, so its agent would refuse every publication: add services.bento.host = "web-1"; to the host's configuration`
	fixPi  = `host pi.home: services.bento.host is "pi", but bento publishes this host as nixosConfigurations."pi.home", so its agent would refuse every publication: add services.bento.host = "pi.home"; to the host's configuration`
)

func TestHostNameMismatchIsRefused(t *testing.T) {
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: mismatchFleet()}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr []string
	}{
		{"hosts", []string{"hosts", "--flake", dir}, 1, "", []string{fixWeb, fixPi}},
		{"check", []string{"check", "--flake", dir}, 1, "", []string{"bento: " + fixWeb, "bento: " + fixPi, "2 problems to fix"}},
		{"check one good host", []string{"check", "--flake", dir, "db-1"}, 0, "1 deployed host checked: no problems", nil},
		{"check one bad host", []string{"check", "--flake", dir, "pi.home"}, 1, "", []string{"bento: " + fixPi}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
}

func TestDeployRefusesHostNameMismatch(t *testing.T) {
	requireRootCLI(t)
	e := newDeployEnv(t, mismatchFleet())
	stdout, stderr, code := runCLI(t, e.args("--no-user-check")...)
	if code != 1 || !strings.Contains(stderr, fixWeb) || !strings.Contains(stderr, fixPi) {
		t.Fatalf("deploy: exit %d, want 1 naming both hosts and the fix\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for _, h := range []string{"web-1", "pi.home", "db-1"} {
		if _, err := os.Stat(filepath.Join(e.root, h, "manifest.json")); !os.IsNotExist(err) {
			t.Errorf("%s was published: %v", h, err)
		}
	}
	// With --keep-going the good host is published, the others are not.
	stdout, stderr, code = runCLI(t, e.args("--no-user-check", "--keep-going")...)
	if code != 1 || !strings.Contains(stdout, "db-1") {
		t.Fatalf("deploy --keep-going: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(e.root, "db-1", "manifest.json")); err != nil {
		t.Errorf("db-1 not published: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.root, "web-1", "manifest.json")); !os.IsNotExist(err) {
		t.Errorf("web-1 was published with --keep-going: %v", err)
	}
}

func TestCheckUserNameLength(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("u", 32)
	hosts := []fixture.Host{
		{Name: "a", Bento: &fixture.Bento{Enable: true, User: long}},
		{Name: "b", Bento: &fixture.Bento{Enable: true, User: strings.Repeat("u", 31)}},
	}
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hosts}); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runCLI(t, "check", "--flake", dir)
	want := `bento: host a: services.bento.user "` + long + `" is not a usable user name (letters, digits, '.', '_', '-', at most 31 characters: NixOS refuses longer ones)`
	if code != 1 || !strings.Contains(stderr, want) || strings.Contains(stderr, "host b:") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s\nwant %q", code, stdout, stderr, want)
	}
}

// The lints of the server's side: secrets the hosts do not declare (or
// declare but never get), and fetch-mode hosts without a cache key.
func TestCheckLintsSecretsAndCacheKey(t *testing.T) {
	dir, sdir := t.TempDir(), t.TempDir()
	hosts := []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true, Secrets: []string{"db", "missing"}}},
		{Name: "pi", Bento: &fixture.Bento{Enable: true, Mode: "fetch"}},
		{Name: "beta", Bento: &fixture.Bento{Enable: true}},
	}
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hosts}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"alpha/db", "alpha/extra.age", "alpha/.gitkeep", "alhpa/db", ".git/x"} {
		p := filepath.Join(sdir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("s"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	noKey := filepath.Join(t.TempDir(), "cache-key.sec")
	key := filepath.Join(t.TempDir(), "cache-key.sec")
	if err := os.WriteFile(key, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	undeclared := "bento: host alpha: " + filepath.Join(sdir, "alpha", "extra.age") + " is published, but the host declares no services.bento.secrets.extra, so its agent refuses to install it: declare it (path, owner, group, mode) or remove the file"
	unpublished := "bento: host alpha: services.bento.secrets.missing is declared, but " + filepath.Join(sdir, "alpha", "missing") + " does not exist, so the host never gets it: add the file (or missing.age), or remove the declaration"
	orphan := "bento: " + filepath.Join(sdir, "alhpa") + ` holds secrets for "alhpa", which is no host of the fleet, so deploy never publishes them: rename it to the host's nixosConfigurations name, or remove it`
	fetch := `bento: host pi: services.bento.mode is "fetch", but the server has no cache key (` + noKey + ` does not exist), so deploy publishes no binary cache and the host has nothing to fetch its system from: run bento keygen (or pass --cache-key where the key is), or set services.bento.mode = "build"`
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		want   []string
		absent []string
	}{
		{"every finding", []string{"--cache-key", noKey}, 1, "", []string{undeclared, unpublished, fetch, orphan, "4 problems to fix"}, []string{"secrets.db", "host beta", ".git"}},
		{"only alpha", []string{"--cache-key", noKey, "alpha"}, 1, "", []string{undeclared, unpublished, "2 problems to fix"}, []string{"host pi", "alhpa"}},
		{"fetch host with a key", []string{"--cache-key", key, "pi"}, 0, "1 deployed host checked: no problems", nil, []string{"cache key"}},
		{"fetch host without one", []string{"pi", "--cache-key", noKey}, 1, "", []string{fetch, "1 problem to fix"}, nil},
		{"good host", []string{"--cache-key", noKey, "beta"}, 0, "1 deployed host checked: no problems", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"check", "--flake", dir, "--secrets-dir", sdir}, tc.args...)
			stdout, stderr, code := runCLI(t, args...)
			if code != tc.code || !strings.Contains(stdout, tc.stdout) {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(stderr, a) {
					t.Errorf("stderr has %q:\n%s", a, stderr)
				}
			}
		})
	}
}

// deploy runs check's lints first, as warnings: it still publishes every
// host (with the undeclared secret: the agent refuses only that one).
func TestDeployWarnsWhatCheckFinds(t *testing.T) {
	requireRootCLI(t)
	hosts := []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true, User: "nobody"}},
		{Name: "pi", Bento: &fixture.Bento{Enable: true, User: "daemon", Mode: "fetch"}},
	}
	e := newDeployEnv(t, hosts)
	sdir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(sdir, "alpha"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sdir, "alpha", "extra"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A --cache-key named explicitly must exist, or deploy refuses: the
	// missing key is the default one.
	noKey := defaultCacheKey
	if _, err := os.Stat(noKey); err == nil || os.Getenv("BENTO_CACHE_KEY") != "" {
		t.Skipf("this machine has a cache key (%s or BENTO_CACHE_KEY)", noKey)
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"no key", nil, []string{
			"bento: warning: host alpha: " + filepath.Join(sdir, "alpha", "extra") + " is published, but the host declares no services.bento.secrets.extra",
			`bento: warning: host pi: services.bento.mode is "fetch", but the server has no cache key (` + noKey + ` does not exist)`,
		}},
		{"no cache", []string{"--no-cache"}, []string{
			`bento: warning: host pi: services.bento.mode is "fetch", but deploy runs with --no-cache`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := append(e.args("--no-user-check", "--secrets-dir", sdir, "--force"), tc.args...)
			stdout, stderr, code := runCLI(t, args...)
			if code != 0 {
				t.Fatalf("deploy: exit %d, want 0 (the lints only warn)\nstdout: %s\nstderr: %s", code, stdout, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			for _, h := range []string{"alpha", "pi"} {
				if _, err := os.Stat(filepath.Join(e.root, h, "manifest.json")); err != nil {
					t.Errorf("%s not published: %v", h, err)
				}
			}
		})
	}
}

// bento check names the null placeholders the template leaves
// (serverHostKey, hostPublicKey) before a build fails on them.
func TestCheckLintsTemplatePlaceholders(t *testing.T) {
	dir := t.TempDir()
	flake := `{ outputs = { self }: { nixosConfigurations = {
  web = { config = { networking.hostName = "web"; services.bento = { enable = true; serverHostKey = null; hostPublicKey = null; }; }; };
  db = { config = { networking.hostName = "db"; services.bento = { enable = true; serverHostKey = "ssh-ed25519 AAAA server"; hostPublicKey = "ssh-ed25519 AAAA db"; }; }; };
  lab = { config = { networking.hostName = "lab"; services.bento = { enable = false; serverHostKey = null; hostPublicKey = null; }; }; };
}; }; }`
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "cache-key.sec")
	os.WriteFile(key, []byte("k"), 0o600)
	stdout, stderr, code := runCLI(t, "check", "--flake", dir, "--cache-key", key)
	if code != exitFailed {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for _, want := range []string{
		"bento: host web: services.bento.serverHostKey is null, as the template leaves it, so the host's build fails",
		"bento: host web: services.bento.hostPublicKey is null, as the template leaves it, so the server authorizes no key",
		"2 problems to fix",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "host db") || strings.Contains(stderr, "host lab") {
		t.Errorf("a host with its keys set, or not deployed, was flagged:\n%s", stderr)
	}
}
