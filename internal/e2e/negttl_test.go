package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// A host in fetch mode that asked the cache for its system before the
// server pushed it must see it once it is there, at the next try: bento
// passes narinfo-cache-negative-ttl 0. The control (a TTL of an hour, Nix's
// default) shows that Nix would otherwise keep taking the path for missing.
func TestFetchModeSeesAPathPushedAfterAMiss(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	pub := e.Publish(t)["alpha"]
	ctx := context.Background()

	dir := t.TempDir()
	cacheDir := filepath.Join(dir, "cache")
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A cache that exists but lacks the system.
	if err := os.WriteFile(filepath.Join(cacheDir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Served over HTTP (Nix keeps its narinfo disk cache for HTTP caches,
	// not for file:// ones), as harmonia or nix-serve would.
	srv := httptest.NewServer(http.FileServer(http.Dir(cacheDir)))
	t.Cleanup(srv.Close)
	cache := srv.URL
	secret := filepath.Join(dir, "cache.sec")
	sk, err := e.Nix.Run(ctx, nix.Cmd{Args: []string{"key", "generate-secret", "--key-name", "bento-ttl-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte(strings.TrimSpace(string(sk))), 0o600); err != nil {
		t.Fatal(err)
	}

	h := e.Host(t, "alpha")
	h.Env = append(h.Env, "NIX_CONFIG="+fixture.NixConfig+"store = "+filepath.Join(dir, "client-store")+"\n")
	h.Settings["mode"] = "fetch"
	h.Settings["substituters"] = []string{cache}
	h.Settings["trustedPublicKeys"] = []string{publicKey(t, secret)}
	h.Settings["retry"] = map[string]any{"initialDelay": "1ms", "maxDelay": "1ms"}
	h.Settings["narinfoCacheNegativeTTL"] = 3600

	// The cache does not have the system yet.
	if res := h.Run(t); res.ExitCode == 0 {
		t.Fatal("fetch from an empty cache succeeded")
	}
	if _, err := e.Nix.Run(ctx, nix.Cmd{Args: []string{"copy", "--to", "file://" + cacheDir + "?secret-key=" + secret, pub.Built}}); err != nil {
		t.Fatal(err)
	}
	// Control: with an hour of negative caching, Nix still takes it for missing.
	if res := h.Run(t); res.ExitCode == 0 {
		t.Fatal("control: with narinfoCacheNegativeTTL 3600 the pushed path was found; this scenario cannot tell whether bento's TTL 0 works")
	}
	// bento's default.
	delete(h.Settings, "narinfoCacheNegativeTTL")
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("with the default narinfoCacheNegativeTTL 0 the pushed system was not fetched: exit %d", res.ExitCode)
	}
	if h.Current(t) != pub.Built {
		t.Errorf("current %s, want %s", h.Current(t), pub.Built)
	}
	if st := h.Status(t); st.Result != manifest.ResultSuccess || st.Attempts != 3 {
		t.Errorf("status: %+v", st)
	}
}
