package main

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/deploy"
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
	poolDir := deploy.PoolDir
	deployNow := func() {
		t.Helper()
		stdout, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", key)...)
		if code != 0 {
			t.Fatalf("deploy: exit %d\n%s\n%s", code, stdout, stderr)
		}
		if strings.Contains(stdout+stderr, poolDir) {
			t.Errorf("the pool shows up in the deploy's output:\n%s\n%s", stdout, stderr)
		}
	}
	has := func(dir, storePath string) bool {
		h, _ := narinfo.HashPart(storePath)
		_, err := os.Stat(filepath.Join(dir, h+".narinfo"))
		return err == nil
	}
	pool := filepath.Join(e.root, poolDir)

	deployNow()
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
	// An unchanged redeploy keeps every link as it was.
	before := cacheFiles(t, filepath.Join(e.root, "alpha", "cache"))
	deployNow()
	if after := cacheFiles(t, filepath.Join(e.root, "alpha", "cache")); !maps.Equal(before, after) {
		t.Errorf("an unchanged redeploy changed alpha's cache:\nbefore %v\nafter  %v", before, after)
	}

	// What Nix does with it (Nix adds log/ and realisations/ to a file:// cache it opens): the manifest's key verifies the host's cache.
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
		deployNow()
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

// cacheFiles lists a host cache (path → inode), checking on the way that
// the host can change none of it: root owns everything, and only root may
// write (the files are shared with the pool and other hosts).
func cacheFiles(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s: owner %d, mode %v; want root's, writable by root only", p, st.Uid, fi.Mode())
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = st.Ino
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 3 {
		t.Fatalf("%s holds only %v", dir, out)
	}
	return out
}

// A host whose cache cannot be filled is not published: its live manifest
// and cache stay, the deploy says why and exits 1.
func TestDeployCacheFailureKeepsThePublication(t *testing.T) {
	requireRootCLI(t)
	hosts := hostsOf("alpha")
	e := newDeployEnv(t, hosts)
	var a, b syscall.Statfs_t
	shm := t.TempDir()
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		t.Fatal(err)
	}
	if d, err := os.MkdirTemp("/dev/shm", "bento-cache-test-"); err == nil {
		shm = d
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	if syscall.Statfs(shm, &a) != nil || syscall.Statfs(e.root, &b) != nil || a.Fsid == b.Fsid {
		t.Skip("needs a pool on another filesystem than the chroot root")
	}
	key := filepath.Join(t.TempDir(), "cache.sec")
	if _, stderr, code := runCLI(t, "keygen", "--name", "deploy-test-1", "--secret-key", key); code != 0 {
		t.Fatal(stderr)
	}
	if stdout, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", key)...); code != 0 {
		t.Fatalf("first deploy: exit %d\n%s\n%s", code, stdout, stderr)
	}
	m1, _ := e.manifest(t, "alpha")
	cache1 := cacheFiles(t, filepath.Join(e.root, "alpha", "cache"))

	hosts[0].Generation = "2"
	if err := fixture.Write(e.fleet, fixture.Fleet{Hosts: hosts, Git: true}); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", key, "--cache-pool", filepath.Join(shm, "pool"))...)
	if code != 1 || !strings.Contains(stdout+stderr, "different filesystems") {
		t.Errorf("deploy with a pool on another filesystem: exit %d; want 1 and the reason\n%s\n%s", code, stdout, stderr)
	}
	m2, _ := e.manifest(t, "alpha")
	if m2.Version != m1.Version || m2.ExpectedToplevel != m1.ExpectedToplevel {
		t.Errorf("alpha was published (%s, %s) although its cache could not be filled; want %s kept", m2.Version, m2.ExpectedToplevel, m1.Version)
	}
	if cache2 := cacheFiles(t, filepath.Join(e.root, "alpha", "cache")); !maps.Equal(cache1, cache2) {
		t.Errorf("the failed deploy changed alpha's cache:\nbefore %v\nafter  %v", cache1, cache2)
	}
}

// --no-cache fills nothing: the manifests it publishes announce no cache,
// and the caches and the pool are left as they were.
func TestDeployNoCache(t *testing.T) {
	requireRootCLI(t)
	e := newDeployEnv(t, hostsOf("alpha"))
	key := filepath.Join(t.TempDir(), "cache.sec")
	if _, stderr, code := runCLI(t, "keygen", "--name", "deploy-test-1", "--secret-key", key); code != 0 {
		t.Fatal(stderr)
	}
	if stdout, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", key)...); code != 0 {
		t.Fatalf("deploy: exit %d\n%s\n%s", code, stdout, stderr)
	}
	cacheDir := filepath.Join(e.root, "alpha", "cache")
	before := cacheFiles(t, cacheDir)
	if stdout, stderr, code := runCLI(t, e.args("--no-user-check", "--cache-key", key, "--no-cache")...); code != 0 {
		t.Fatalf("deploy --no-cache: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if m, _ := e.manifest(t, "alpha"); m.Cache != nil {
		t.Errorf("after --no-cache the manifest announces %+v", m.Cache)
	}
	if after := cacheFiles(t, cacheDir); !maps.Equal(before, after) {
		t.Errorf("--no-cache changed alpha's cache:\nbefore %v\nafter  %v", before, after)
	}
}
