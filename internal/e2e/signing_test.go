package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

func newPublicationKey(t *testing.T, name string) *manifest.SigningKey {
	t.Helper()
	k, err := manifest.GenerateSigningKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return &k
}

func chrootManifest(t *testing.T, e *Env, host string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.Chroot(host), manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// serveManifest puts data in place of the host's manifest.json, as a
// mirror (or anyone who can write the chroot) would.
func serveManifest(t *testing.T, e *Env, host string, data []byte) {
	t.Helper()
	p := filepath.Join(e.Chroot(host), manifest.ManifestFile)
	if err := os.WriteFile(p+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
}

// refused runs a tick that must refuse the publication: it fails, says
// why, and the host keeps running system.
func refused(t *testing.T, h *Host, system, why string, args ...string) Result {
	t.Helper()
	res := h.Run(t, args...)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), why) {
		t.Fatalf("tick: exit %d, want a failure saying %q:\n%s", res.ExitCode, why, res.Output())
	}
	if got := h.Current(t); got != system {
		t.Fatalf("after a refused publication the host runs %s, not %s", got, system)
	}
	return res
}

// A host that pins the fleet's publication key applies what the server
// signed, and refuses a manifest changed by one byte, another host's
// manifest and an older signed manifest replayed into its chroot, with
// nothing applied; a publication older than maxPublicationAge is
// reported stale.
func TestSignedPublicationsAndTamperedOnes(t *testing.T) {
	key := newPublicationKey(t, "fleet-1")
	e := Start(t, hostsFleet("alpha", "beta"))
	e.PublicationKey = key
	pub1 := e.Publish(t)["alpha"]
	v1 := chrootManifest(t, e, "alpha")
	h := e.Host(t, "alpha")
	h.Settings["publicationKey"] = key.Public().String()
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != pub1.Built {
		t.Fatalf("the signed publication was not applied: exit %d", res.ExitCode)
	}

	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	pub2 := e.Publish(t, "alpha")["alpha"]
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != pub2.Built {
		t.Fatalf("the second signed publication was not applied: exit %d", res.ExitCode)
	}
	if m2 := e.Manifest(t, "alpha"); m2.Sequence <= mustParse(t, v1).Sequence {
		t.Fatalf("sequence %d after %d", m2.Sequence, mustParse(t, v1).Sequence)
	}

	// One byte of a new publication changed (its expected system).
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "3" })
	pub3 := e.Publish(t, "alpha")["alpha"]
	v3 := chrootManifest(t, e, "alpha")
	tampered := bytes.Clone(v3)
	i := bytes.Index(tampered, []byte(pub3.Built)) + len("/nix/store/")
	tampered[i] ^= 1
	serveManifest(t, e, "alpha", tampered)
	refused(t, h, pub2.Built, "does not verify")
	st := h.Status(t)
	if st.Result != manifest.ResultFailure || !strings.Contains(st.Error, "fleet-1") || !strings.Contains(st.Error, "changed after it was signed") || st.AppliedVersion != pub2.Version {
		t.Fatalf("the report of a tampered manifest: %+v", st)
	}

	// Another host's manifest, signed by the same key.
	serveManifest(t, e, "alpha", chrootManifest(t, e, "beta"))
	refused(t, h, pub2.Built, `is for host "beta"`, "--now")

	// An older signed manifest replayed.
	serveManifest(t, e, "alpha", v1)
	refused(t, h, pub2.Built, "older than sequence", "--now")
	if st := h.Status(t); st.Result != manifest.ResultFailure || !strings.Contains(st.Error, "replays an old publication") {
		t.Fatalf("the report of a replay: %+v", st)
	}

	// Unsigned: refused too, naming the key and the fix.
	serveManifest(t, e, "alpha", mustUnsign(t, v3))
	refused(t, h, pub2.Built, "not signed", "--now")
	if st := h.Status(t); !strings.Contains(st.Error, key.Public().String()) || !strings.Contains(st.Error, "--publication-key") {
		t.Fatalf("the report of an unsigned manifest: %+v", st)
	}

	// The real one goes through.
	serveManifest(t, e, "alpha", v3)
	if res := h.Run(t, "--now"); res.ExitCode != 0 || h.Current(t) != pub3.Built {
		t.Fatalf("the genuine publication after the tampered ones: exit %d", res.ExitCode)
	}

	// Stale: a genuine publication, signed by the fleet, but published
	// two hours ago (signed here as the publisher would have then).
	h.Settings["maxPublicationAge"] = "1h"
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "4" })
	e.Publish(t, "alpha")
	m := mustParse(t, chrootManifest(t, e, "alpha"))
	m.PublishedAt = time.Now().Add(-2 * time.Hour).UTC()
	m.Signature = nil
	serveManifest(t, e, "alpha", signed(t, m, key))
	refused(t, h, pub3.Built, "stale publication")
	if st := h.Status(t); st.Result != manifest.ResultFailure || !strings.Contains(st.Error, "maxPublicationAge") {
		t.Fatalf("the report of a stale publication: %+v", st)
	}
}

func mustParse(t *testing.T, data []byte) *manifest.Manifest {
	t.Helper()
	m, err := manifest.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustUnsign(t *testing.T, data []byte) []byte {
	t.Helper()
	body, sig, err := manifest.Split(data)
	if err != nil || sig == nil {
		t.Fatalf("not a signed manifest: %v", err)
	}
	return body
}

func signed(t *testing.T, m *manifest.Manifest, k *manifest.SigningKey) []byte {
	t.Helper()
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	out, err := manifest.Sign(append(data, '\n'), *k)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Key rotation: the server announces the next key under the current one's
// signature; the host pins it on applying that publication, accepts the
// next one signed by the new key while its configuration still names the
// old key, and refuses a key nobody announced.
func TestPublicationKeyRotation(t *testing.T) {
	k1, k2, stranger := newPublicationKey(t, "fleet-1"), newPublicationKey(t, "fleet-2"), newPublicationKey(t, "fleet-x")
	e := Start(t, hostsFleet("alpha"))
	e.PublicationKey = k1
	e.Publish(t)
	h := e.Host(t, "alpha")
	h.Settings["publicationKey"] = k1.Public().String()
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatal("first publication not applied")
	}

	// Signed by a key this host never pinned: refused.
	e.PublicationKey = stranger
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	before := h.Current(t)
	e.Publish(t)
	refused(t, h, before, "which this host does not pin")

	// Back to the fleet's key, announcing the next one: the same
	// version published anew (updated), which the host verifies and
	// remembers though it has nothing to apply.
	e.PublicationKey = k1
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "1" })
	e.Publish(t)
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != before {
		t.Fatalf("back to the applied version: exit %d", res.ExitCode)
	}
	e.NextPublicationKey = k2.Public().String()
	if pub := e.Publish(t)["alpha"]; pub.Status != "updated" {
		t.Fatalf("announcing the next key: %s, want updated", pub.Status)
	}
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != before {
		t.Fatalf("the announcing publication: exit %d, running %s", res.ExitCode, h.Current(t))
	}
	e.NextPublicationKey = ""

	// The switch: the server signs with the new key.
	e.PublicationKey = k2
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "3" })
	pub3 := e.Publish(t)["alpha"]
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != pub3.Built {
		t.Fatalf("the publication signed by the announced key was not applied: exit %d", res.ExitCode)
	}
}
