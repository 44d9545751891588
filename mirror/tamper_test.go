package mirror_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// failedOver sets up alpha (and beta) on a primary and a mirror, applies
// v1 from the primary, publishes and pushes v2 (one file changed), and
// stops the primary: the next tick of alpha reads the mirror.
func failedOver(t *testing.T) (e *e2e.Env, m *mirrorServer, h *e2e.Host, v1 e2e.Published) {
	t.Helper()
	e = e2e.Start(t, fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}, {Name: "beta", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n"},
	})
	h = e.Host(t, "alpha")
	e.Host(t, "beta")
	v1 = e.Publish(t)["alpha"]
	m = startMirror(t, e, "alpha", "beta")
	useServers(e, h, m)
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != v1.Built {
		t.Fatalf("first tick: exit %d", res.ExitCode)
	}
	e.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	e.WriteFleet(t, e.Fleet)
	e.Publish(t)
	push(t, e, m)
	e.SSHD.Stop()
	return e, m, h, v1
}

// A mirror that changes a file of the publication: the host refuses it by
// its sha256 in the manifest, and stays on what it runs.
func TestMirrorChangingAFileIsRefused(t *testing.T) {
	e, m, h, v1 := failedOver(t)
	man := e.Manifest(t, "alpha")
	var obj string
	for _, f := range man.Files {
		if f.Path == "modules/a.nix" {
			obj = filepath.Join(m.sshd.Root, "alpha", filepath.FromSlash(manifest.ObjectPath(f.SHA256)))
		}
	}
	if obj == "" {
		t.Fatal("modules/a.nix is not published")
	}
	// Same size, other bytes: only the hash tells.
	os.Chmod(obj, 0o644)
	if err := os.WriteFile(obj, []byte("{ a = 9; }\n"), 0o444); err != nil {
		t.Fatal(err)
	}

	res := h.Run(t)
	if res.ExitCode == 0 || h.Current(t) != v1.Built {
		t.Fatalf("a tampered file was applied: exit %d, current %s", res.ExitCode, h.Current(t))
	}
	if !strings.Contains(res.Output(), "but the manifest says") || !strings.Contains(res.Output(), "modules/a.nix") {
		t.Errorf("the refusal does not name the file and its hash:\n%s", res.Output())
	}
	r := readReport(t, filepath.Join(m.sshd.Root, "alpha", manifest.StatusFile))
	if r.Result != manifest.ResultFailure || r.AppliedVersion != v1.Version || r.Server != m.sshd.Addr {
		t.Errorf("the report on the mirror: %+v", r)
	}
}

// A mirror that serves another host's manifest in place of alpha's: alpha
// refuses it and applies nothing.
func TestMirrorSwappingAnotherHostsManifestIsRefused(t *testing.T) {
	_, m, h, v1 := failedOver(t)
	beta, err := os.ReadFile(filepath.Join(m.sshd.Root, "beta", manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.sshd.Root, "alpha", manifest.ManifestFile), beta, 0o644); err != nil {
		t.Fatal(err)
	}
	res := h.Run(t)
	if res.ExitCode == 0 || h.Current(t) != v1.Built {
		t.Fatalf("another host's manifest was applied: exit %d, current %s", res.ExitCode, h.Current(t))
	}
	if !strings.Contains(res.Output(), `is for host "beta", not "alpha"`) {
		t.Errorf("the refusal does not say whose manifest it is:\n%s", res.Output())
	}
}

// With signed publications, a compromised mirror can withhold, not forge:
// the host applies what the primary signed through the mirror, and
// refuses, with nothing applied, an older signed manifest the mirror
// replays, one it rewrote, and another host's signed manifest.
func TestSignedPublicationsThroughACompromisedMirror(t *testing.T) {
	key, err := manifest.GenerateSigningKey("fleet-1")
	if err != nil {
		t.Fatal(err)
	}
	e := e2e.Start(t, fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}, {Name: "beta", Bento: &fixture.Bento{Enable: true}}},
	})
	e.PublicationKey = &key
	h := e.Host(t, "alpha")
	e.Host(t, "beta")
	pub1 := e.Publish(t)["alpha"]
	m := startMirror(t, e, "alpha", "beta")
	push(t, e, m)
	useServers(e, h, m)
	h.Settings["publicationKey"] = key.Public().String()
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != pub1.Built {
		t.Fatalf("first tick: exit %d", res.ExitCode)
	}
	mirrorManifest := filepath.Join(m.sshd.Root, "alpha", manifest.ManifestFile)
	v1, err := os.ReadFile(mirrorManifest)
	if err != nil {
		t.Fatal(err)
	}

	// The primary goes away; its next publication reaches the host
	// through the mirror, signature and all.
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	pub2 := e.Publish(t, "alpha")["alpha"]
	push(t, e, m)
	e.SSHD.Stop()
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != pub2.Built {
		t.Fatalf("the signed publication through the mirror was not applied: exit %d", res.ExitCode)
	}
	v2, _ := os.ReadFile(mirrorManifest)

	serve := func(data []byte) {
		t.Helper()
		if err := os.WriteFile(mirrorManifest+".tmp", data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(mirrorManifest+".tmp", mirrorManifest); err != nil {
			t.Fatal(err)
		}
	}
	refused := func(why string) {
		t.Helper()
		res := h.Run(t, "--now")
		if res.ExitCode == 0 || !strings.Contains(res.Output(), why) {
			t.Errorf("tick: exit %d, want a refusal saying %q:\n%s", res.ExitCode, why, res.Output())
		}
		if got := h.Current(t); got != pub2.Built {
			t.Fatalf("the host runs %s after a refused publication, not %s", got, pub2.Built)
		}
		r := readReport(t, filepath.Join(m.sshd.Root, "alpha", manifest.StatusFile))
		if r.Result != manifest.ResultFailure || r.AppliedVersion != pub2.Version || r.Server != m.sshd.Addr {
			t.Errorf("the report on the mirror: result %s applied %s server %s", r.Result, r.AppliedVersion, r.Server)
		}
	}

	// Replay: the older signed manifest (its objects are still there).
	serve(v1)
	refused("older than sequence")

	// Forgery: a new version written by the mirror into the signed bytes.
	forged := bytes.Replace(v2, []byte(pub2.Version), []byte("0123456789abcdef"), -1)
	if bytes.Equal(forged, v2) {
		t.Fatal("the version is not in the manifest")
	}
	serve(forged)
	refused("does not verify")

	// Another host's genuine signed manifest.
	beta, err := os.ReadFile(filepath.Join(m.sshd.Root, "beta", manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	serve(beta)
	refused(`is for host "beta", not "alpha"`)
}
