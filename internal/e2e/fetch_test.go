package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// TestFetchModeSubstitutesIntoASeparateStore runs a host in fetch mode
// with its own Nix store (a chroot store under a temporary directory, as
// if it were another machine): the server's build reaches it only through
// a signed file:// binary cache, and the host evaluates nothing.
func TestFetchModeSubstitutesIntoASeparateStore(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	pub := e.Publish(t)["alpha"]
	ctx := context.Background()

	dir := t.TempDir()
	cache := "file://" + filepath.Join(dir, "cache")
	secret := filepath.Join(dir, "cache.sec")
	runNix := func(args ...string) string {
		t.Helper()
		out, err := e.Nix.Run(ctx, nix.Cmd{Args: args})
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	sk := runNix("key", "generate-secret", "--key-name", "bento-test-1")
	if err := os.WriteFile(secret, []byte(sk), 0o600); err != nil {
		t.Fatal(err)
	}
	pubKey := publicKey(t, secret)
	runNix("copy", "--to", cache+"?secret-key="+secret, pub.Built)

	store := filepath.Join(dir, "client-store")
	h := e.Host(t, "alpha")
	h.Env = append(h.Env, "NIX_CONFIG="+fixture.NixConfig+"store = "+store+"\n")
	h.Settings["mode"] = "fetch"
	h.Settings["substituters"] = []string{cache}

	// A key the cache did not sign with: nothing is trusted, nothing applied.
	h.Settings["trustedPublicKeys"] = []string{"other-1:" + strings.SplitN(pubKey, ":", 2)[1][:10] + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
	res := h.Run(t)
	if res.ExitCode == 0 || h.ProfileTarget(t) != "" {
		t.Fatalf("fetch with an untrusted cache key: exit %d, profile %s", res.ExitCode, h.ProfileTarget(t))
	}
	if st := h.Status(t); st.Result != manifest.ResultFailure || !strings.Contains(st.Error, "realise") {
		t.Errorf("status after an untrusted fetch: %+v", st)
	}

	h.Settings["trustedPublicKeys"] = []string{pubKey}
	h.Settings["retry"] = map[string]any{"initialDelay": "1ms", "maxDelay": "1ms"}
	res = h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("fetch mode: exit %d", res.ExitCode)
	}
	if !strings.Contains(res.Output(), "from '"+cache+"'") {
		t.Errorf("the system was not substituted from the cache")
	}
	if strings.Contains(res.Output(), "bento: building") {
		t.Error("fetch mode built")
	}
	if h.ProfileTarget(t) != pub.Built || h.Current(t) != pub.Built {
		t.Errorf("fetch mode: profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), pub.Built)
	}
	if _, err := os.Stat(filepath.Join(store, strings.TrimPrefix(pub.Built, "/"))); err != nil {
		t.Errorf("the system is not in the host's own store: %v", err)
	}
	drvs, _ := filepath.Glob(filepath.Join(store, "nix", "store", "*.drv"))
	if len(drvs) != 0 {
		t.Errorf("fetch mode evaluated: derivations in the host's store: %v", drvs)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultSuccess || st.Mode != "fetch" || st.ActualToplevel != pub.Built || st.Reproducible == nil || !*st.Reproducible {
		t.Errorf("status in fetch mode: %+v", st)
	}
}

// publicKey derives the public key of a Nix signing key (nix reads the
// secret key on standard input, which nix.Runner does not feed).
func publicKey(t *testing.T, secretFile string) string {
	t.Helper()
	in, err := os.Open(secretFile)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	cmd := exec.Command("nix", "key", "convert-secret-to-public")
	cmd.Env = append(os.Environ(), fixture.Env()...)
	cmd.Stdin = in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix key convert-secret-to-public: %v", err)
	}
	return strings.TrimSpace(string(out))
}
