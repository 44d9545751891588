package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// deployWithCache runs the real bento deploy into the e2e chroots with a
// signing key, as an operator would after bento keygen.
func deployWithCache(t *testing.T, e *Env, key string) {
	t.Helper()
	cmd := exec.Command(Bento(t), "deploy", "--flake", e.FleetDir, "--chroot-root", e.SSHD.Root,
		"--state-dir", filepath.Join(filepath.Dir(key), "state"), "--cache-key", key, "--no-user-check")
	cmd.Env = append(os.Environ(), fixture.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bento deploy: %v\n%s", err, out)
	}
}

// ownStore gives the host a Nix store of its own, as if it were another
// machine, and its own narinfo disk cache.
func ownStore(t *testing.T, h *Host) string {
	t.Helper()
	store := filepath.Join(t.TempDir(), "store")
	h.Env = append(h.Env, "NIX_CONFIG="+fixture.NixConfig+"store = "+store+"\n", "XDG_CACHE_HOME="+store+"-xdg")
	return store
}

var cacheLine = regexp.MustCompile(`binary cache: (\d+) bytes from the server \((\d+) NARs`)

// A host in fetch mode, with no substituter configured, updates end to end
// from its own chroot: the first update brings its closure, the next one
// only the path that changed, and a tampered cache is refused and named.
func TestFetchModeThroughTheChrootCache(t *testing.T) {
	f := hostsFleet("alpha", "beta")
	f.Hosts[1].Kernel = "beta-only"
	e := Start(t, f)
	keyDir := t.TempDir()
	key := filepath.Join(keyDir, "cache.sec")
	if out, err := exec.Command(Bento(t), "keygen", "--name", "e2e-1", "--secret-key", key).CombinedOutput(); err != nil {
		t.Fatalf("bento keygen: %v\n%s", err, out)
	}
	h := e.Host(t, "alpha")
	store := ownStore(t, h)
	h.Settings["mode"] = "fetch"
	h.Settings["retry"] = map[string]any{"initialDelay": "1ms", "maxDelay": "1ms"}

	deployWithCache(t, e, key)
	m1 := e.Manifest(t, "alpha")
	res := h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("first update: exit %d", res.ExitCode)
	}
	if h.ProfileTarget(t) != m1.ExpectedToplevel || h.Current(t) != m1.ExpectedToplevel {
		t.Fatalf("profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), m1.ExpectedToplevel)
	}
	if !strings.Contains(res.Output(), "from 'http://127.0.0.1:") {
		t.Error("the system was not substituted through the agent's cache")
	}
	if drvs, _ := filepath.Glob(filepath.Join(store, "nix", "store", "*.drv")); len(drvs) != 0 {
		t.Errorf("fetch mode evaluated: %v", drvs)
	}
	first := cacheBytes(t, res.Output())
	st1 := h.Status(t)
	if first.nars != 4 || st1.BytesFetched < first.bytes {
		t.Errorf("first update: %d NARs, %d bytes through the cache, report says %d fetched; want the 4 paths of the closure, all counted", first.nars, first.bytes, st1.BytesFetched)
	}

	// One path changes.
	e.Update(t, "alpha", func(h *fixture.Host) { h.Generation = "2" })
	deployWithCache(t, e, key)
	m2 := e.Manifest(t, "alpha")
	res = h.Run(t)
	if res.ExitCode != 0 || h.ProfileTarget(t) != m2.ExpectedToplevel {
		t.Fatalf("second update: exit %d, profile %s, want %s", res.ExitCode, h.ProfileTarget(t), m2.ExpectedToplevel)
	}
	second := cacheBytes(t, res.Output())
	if second.nars != 1 || second.bytes >= first.bytes {
		t.Errorf("one changed path: %d NARs, %d bytes (first update %d bytes); want exactly 1 NAR", second.nars, second.bytes, first.bytes)
	}
	if st := h.Status(t); st.Result != manifest.ResultSuccess || st.BytesFetched < second.bytes {
		t.Errorf("status after the second update: %+v", st)
	}

	// Someone alters the host's narinfo on the server.
	e.Update(t, "alpha", func(h *fixture.Host) { h.Generation = "3" })
	deployWithCache(t, e, key)
	m3 := e.Manifest(t, "alpha")
	hash, _ := narinfo.HashPart(m3.ExpectedToplevel)
	info := filepath.Join(e.Chroot("alpha"), "cache", hash+".narinfo")
	data, err := os.ReadFile(info)
	if err != nil {
		t.Fatal(err)
	}
	// Replaced, not written through: the file is a hard link into the pool.
	os.Remove(info)
	if err := os.WriteFile(info, []byte(strings.Replace(string(data), "NarSize: ", "NarSize: 9", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	res = h.Run(t)
	if res.ExitCode == 0 || h.ProfileTarget(t) != m2.ExpectedToplevel {
		t.Fatalf("tampered cache: exit %d, profile %s; want a failure and the second system kept", res.ExitCode, h.ProfileTarget(t))
	}
	if st := h.Status(t); st.Result != manifest.ResultFailure || !strings.Contains(st.Error, hash+".narinfo") || !strings.Contains(st.Error, "fail verification") {
		t.Errorf("the report does not name the tampered file: %q", st.Error)
	}
}

// In build mode the host evaluates its flake, but substitutes what the
// server built from its chroot instead of building it.
func TestBuildModeSubstitutesFromTheChrootCache(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	key := filepath.Join(t.TempDir(), "cache.sec")
	if out, err := exec.Command(Bento(t), "keygen", "--name", "e2e-1", "--secret-key", key).CombinedOutput(); err != nil {
		t.Fatalf("bento keygen: %v\n%s", err, out)
	}
	h := e.Host(t, "alpha")
	ownStore(t, h)
	deployWithCache(t, e, key)
	m := e.Manifest(t, "alpha")
	res := h.Run(t)
	if res.ExitCode != 0 || h.ProfileTarget(t) != m.ExpectedToplevel {
		t.Fatalf("build mode: exit %d, profile %s, want %s", res.ExitCode, h.ProfileTarget(t), m.ExpectedToplevel)
	}
	if strings.Contains(res.Output(), "building '/nix/store/") {
		t.Error("the host built what the server had built")
	}
	if got := cacheBytes(t, res.Output()); got.nars != 4 {
		t.Errorf("%d NARs through the cache, want the closure's 4", got.nars)
	}
}

type cacheUse struct {
	bytes int64
	nars  int
}

func cacheBytes(t *testing.T, out string) cacheUse {
	t.Helper()
	m := cacheLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the agent's log does not say what went through the cache:\n%s", out)
	}
	b, _ := strconv.ParseInt(m[1], 10, 64)
	n, _ := strconv.Atoi(m[2])
	return cacheUse{b, n}
}
