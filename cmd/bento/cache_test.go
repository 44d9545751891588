package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

// bento deploy with a signing key gives each host a signed cache of its
// own closure, keeps the live system for hosts mid-update, and frees what
// no host needs.
func TestDeployFillsHostCaches(t *testing.T) {
	requireRootCLI(t)
	hosts := hostsOf("alpha", "beta")
	hosts[1].Kernel = "beta-own"
	e := newDeployEnv(t, hosts)
	key := filepath.Join(t.TempDir(), "cache.sec")
	if _, stderr, code := runCLI(t, "keygen", "--name", "deploy-test-1", "--secret-key", key); code != 0 {
		t.Fatal(stderr)
	}
	pub, _ := os.ReadFile(strings.TrimSuffix(key, ".sec") + ".pub")
	deploy := func() {
		t.Helper()
		stdout, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", key)...)
		if code != 0 {
			t.Fatalf("deploy: exit %d\n%s\n%s", code, stdout, stderr)
		}
		if strings.Contains(stdout+stderr, cachePoolDir) {
			t.Errorf("the pool shows up in the deploy's output:\n%s\n%s", stdout, stderr)
		}
	}
	has := func(dir, storePath string) bool {
		h, _ := narinfo.HashPart(storePath)
		_, err := os.Stat(filepath.Join(dir, h+".narinfo"))
		return err == nil
	}
	pool := filepath.Join(e.root, cachePoolDir)

	deploy()
	alpha1, _ := e.manifest(t, "alpha")
	beta, _ := e.manifest(t, "beta")
	for _, m := range []struct{ host, top string }{{"alpha", alpha1.ExpectedToplevel}, {"beta", beta.ExpectedToplevel}} {
		mf, _ := e.manifest(t, m.host)
		if mf.Cache == nil || mf.Cache.Dir != "cache" || mf.Cache.PublicKey != strings.TrimSpace(string(pub)) {
			t.Fatalf("%s's manifest announces %+v, want the cache and the key from bento keygen", m.host, mf.Cache)
		}
		if !has(filepath.Join(e.root, m.host, "cache"), m.top) {
			t.Errorf("%s's cache lacks its system", m.host)
		}
	}
	betaKernel := storePathNamed(t, beta.ExpectedToplevel, "kernel-beta-own")
	if has(filepath.Join(e.root, "alpha", "cache"), betaKernel) {
		t.Error("alpha's cache holds beta's kernel")
	}
	// What Nix does with it: the manifest's key verifies the host's cache.
	store := filepath.Join(t.TempDir(), "client")
	r := &nix.Runner{Env: append(fixture.Env(), "XDG_CACHE_HOME="+store+"-xdg")}
	if _, err := r.Output(context.Background(), "", "copy", "--from", "file://"+filepath.Join(e.root, "alpha", "cache"), "--to", store,
		"--option", "require-sigs", "true", "--option", "trusted-public-keys", alpha1.Cache.PublicKey, alpha1.ExpectedToplevel); err != nil {
		t.Errorf("substituting alpha's system from its cache: %v", err)
	}

	// Alpha changes twice: its cache keeps the live system one deploy
	// longer, then it is gone from the cache and the pool.
	for _, gen := range []string{"2", "3"} {
		hosts[0].Generation = gen
		if err := fixture.Write(e.fleet, fixture.Fleet{Hosts: hosts, Git: true}); err != nil {
			t.Fatal(err)
		}
		deploy()
	}
	alpha3, _ := e.manifest(t, "alpha")
	cacheDir := filepath.Join(e.root, "alpha", "cache")
	if !has(cacheDir, alpha3.ExpectedToplevel) || has(cacheDir, alpha1.ExpectedToplevel) || has(pool, alpha1.ExpectedToplevel) {
		t.Errorf("after two changes: cache has new %v, first %v; pool has first %v; want true, false, false",
			has(cacheDir, alpha3.ExpectedToplevel), has(cacheDir, alpha1.ExpectedToplevel), has(pool, alpha1.ExpectedToplevel))
	}
	gen2 := 0
	infos, _ := filepath.Glob(filepath.Join(cacheDir, "*.narinfo"))
	for _, f := range infos {
		data, _ := os.ReadFile(f)
		if strings.Contains(string(data), "-nixos-system-alpha-2\n") {
			gen2++
		}
	}
	if gen2 != 1 {
		t.Errorf("alpha's cache holds %d narinfos of its live (previous) system, want 1", gen2)
	}
	if !has(filepath.Join(e.root, "beta", "cache"), beta.ExpectedToplevel) || !has(pool, betaKernel) {
		t.Error("alpha's deploys lost beta's entries")
	}
}

func TestDeployCacheBadKey(t *testing.T) {
	requireRootCLI(t)
	e := newDeployEnv(t, hostsOf("alpha"))
	_, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", filepath.Join(t.TempDir(), "missing.sec"))...)
	if code != 2 || !strings.Contains(stderr, "bento keygen") {
		t.Errorf("exit %d, stderr %q; want 2 and a pointer to bento keygen", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(e.root, "alpha", "manifest.json")); !os.IsNotExist(err) {
		t.Errorf("published despite the bad key: %v", err)
	}
}

// storePathNamed finds the path of the closure of top whose name ends in suffix.
func storePathNamed(t *testing.T, top, suffix string) string {
	t.Helper()
	out, err := (&nix.Runner{Env: fixture.Env()}).Output(context.Background(), "", "path-info", "-r", top)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasSuffix(p, suffix) {
			return p
		}
	}
	t.Fatalf("no %s in the closure of %s", suffix, top)
	return ""
}
