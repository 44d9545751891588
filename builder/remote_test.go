package builder_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/nix"
)

// Scale-out on Nix's own engines, for real on loopback: a second Nix
// store, owned by a build user who logs in over a real sshd, is the
// remote builder (--builders ssh-ng://…) and then a cache (--copy-to
// ssh-ng://…). Nix 2.8 needs no daemon for either: ssh-ng runs
// nix-daemon --stdio on the far side, which serves the store named by the
// URL's remote-store parameter itself (a chroot store: logical /nix/store,
// real files under the user's home) and trusts its standard streams.
// Building in a chroot store makes Nix use its sandbox; the fixture's
// builders run the host's /bin/sh, so the builder's nix.conf lets the
// sandbox see /bin, /usr and /lib.
func TestRemoteBuilderAndCopyOverSSHNG(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	conf, err := os.MkdirTemp("", "bento-test-builder-conf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(conf) })
	if err := os.Chmod(conf, 0o755); err != nil {
		t.Fatal(err)
	}
	// The cache accepts only what the server signed, as a shared cache
	// should: nix-daemon --stdio trusts its client, but nix copy asks it
	// to check signatures.
	secret, public := signingKey(t)
	nixConf := "experimental-features = nix-command\nsandbox = true\nextra-sandbox-paths = /bin /usr /lib /lib64\nsubstituters =\ntrusted-public-keys = " + public + "\n"
	if err := os.WriteFile(filepath.Join(conf, "nix.conf"), []byte(nixConf), 0o644); err != nil {
		t.Fatal(err)
	}
	bu, home := srv.AddShellUser(t, "builder", []string{"NIX_CONF_DIR=" + conf})
	buildStore := filepath.Join(home, "store")
	cacheStore := filepath.Join(home, "cache")

	// This side builds nothing itself (max-jobs = 0): every derivation
	// must go to the builder. ssh's port and host key come from
	// NIX_SSHOPTS, as with any ssh-ng store on a non-standard port.
	r := &nix.Runner{Env: []string{
		"NIX_CONFIG=" + fixture.NixConfig + "max-jobs = 0\n",
		"NIX_SSHOPTS=-p " + strconv.Itoa(srv.Port) + " -o UserKnownHostsFile=" + srv.KnownHostsFile + " -o BatchMode=yes",
	}}
	// Each store is created by the first nix-daemon --stdio that opens it;
	// several creating it at once race on its database. A real builder's
	// store exists before its first build: open both once, one at a time.
	for _, store := range []string{buildStore, cacheStore} {
		uri := "ssh-ng://" + bu.User + "@127.0.0.1?remote-store=" + store + "&ssh-key=" + bu.KeyFile
		if _, err := r.Output(context.Background(), "", "store", "ping", "--store", uri); err != nil {
			t.Fatalf("opening the builder's store %s over ssh-ng: %v", store, err)
		}
	}
	gen := nonce(t)
	hosts := writeFleet(t, r, fixture.Fleet{Hosts: fixture.Many("web", 3, func(i int, h *fixture.Host) {
		h.Bento = &fixture.Bento{Enable: true}
		h.Generation, h.Kernel, h.Initrd, h.Modules = gen, gen, gen, gen
	})})
	builderURI := "ssh-ng://" + bu.User + "@127.0.0.1?remote-store=" + buildStore
	state := t.TempDir()
	results, err := builder.Build(context.Background(), r, hosts, builder.Options{
		Jobs: 3, StateDir: state,
		Builders: builderURI + " " + fixture.NixSystem() + " " + bu.KeyFile + " 4",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range results {
		if !res.OK() {
			t.Fatalf("%s: %v", res.Host, res.Err)
		}
		log, _ := os.ReadFile(res.LogFile)
		if !strings.Contains(string(log), "from 'ssh-ng://"+bu.User+"@127.0.0.1'") {
			t.Errorf("%s: the log does not show the system copied back from the builder:\n%s", res.Host, log)
		}
		// Built there: the system's files are in the builder's store.
		if _, err := os.Stat(filepath.Join(buildStore, res.OutPath, "nixos-version")); err != nil {
			t.Errorf("%s: %s was not built in the builder's store: %v", res.Host, res.OutPath, err)
		}
		// And here, registered with the local store.
		if !storePathValid(t, res.OutPath) {
			t.Errorf("%s: %s is not valid in the local store", res.Host, res.OutPath)
		}
	}

	// The same hosts again, now copied to a cache behind the same sshd:
	// nothing is realised (unchanged), every closure is copied. A store URL
	// names its key itself (ssh-key=); a builders line has a field for it.
	cacheURI := "ssh-ng://" + bu.User + "@127.0.0.1?remote-store=" + cacheStore + "&ssh-key=" + bu.KeyFile
	results, err = builder.Build(context.Background(), r, hosts, builder.Options{Jobs: 3, StateDir: state, CopyTo: cacheURI, SignKey: secret})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range results {
		if !res.OK() || !res.Unchanged {
			t.Fatalf("%s: unchanged %v, err %v, copy %v", res.Host, res.Unchanged, res.Err, res.CopyErr)
		}
		out, err := exec.Command("nix-store", "-qR", res.OutPath).Output()
		if err != nil {
			t.Fatal(err)
		}
		closure := strings.Fields(string(out))
		if len(closure) < 4 { // toplevel, kernel, initrd, modules
			t.Fatalf("%s: closure %v is too small to tell anything", res.Host, closure)
		}
		for _, p := range closure {
			if _, err := os.Stat(filepath.Join(cacheStore, p)); err != nil {
				t.Errorf("%s: %s of its closure is not in the cache store: %v", res.Host, p, err)
			}
		}
	}
	// The cache is a real Nix store: Nix itself lists what bento copied,
	// with the server's signature.
	cmd := exec.Command("nix", "path-info", "--store", cacheStore, "--recursive", "--sigs", results[0].OutPath)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), results[0].OutPath) || !strings.Contains(string(out), "bento-test-remote:") {
		t.Errorf("nix path-info --sigs in the cache store: %v: %s", err, out)
	}
}

// signingKey makes a Nix signing key pair: the secret key's file and the
// public key.
func signingKey(t *testing.T) (string, string) {
	t.Helper()
	gen := exec.Command("nix", "key", "generate-secret", "--key-name", "bento-test-remote")
	gen.Env = append(os.Environ(), fixture.Env()...)
	secret, err := gen.Output()
	if err != nil {
		t.Fatalf("nix key generate-secret: %v", err)
	}
	file := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(file, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	conv := exec.Command("nix", "key", "convert-secret-to-public")
	conv.Env = gen.Env
	conv.Stdin = strings.NewReader(string(secret))
	public, err := conv.Output()
	if err != nil {
		t.Fatalf("nix key convert-secret-to-public: %v", err)
	}
	return file, strings.TrimSpace(string(public))
}
