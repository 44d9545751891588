package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// inProcess runs agent.Run for one host against a real sshd, counting the
// bytes the server sends.
type inProcess struct {
	env *e2e.Env
	h   *e2e.Host
	in  atomic.Int64
	out strings.Builder
	// aside holds the publisher's config/ while the chroot is in format 2
	// (see publish2).
	aside string
}

func startInProcess(t *testing.T, f fixture.Fleet) *inProcess {
	t.Helper()
	p := &inProcess{env: e2e.Start(t, f), aside: filepath.Join(t.TempDir(), "config-aside")}
	p.h = p.env.Host(t, "alpha")
	for _, kv := range p.h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return p
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// run is one tick with the host's current settings.
func (p *inProcess) run(t *testing.T) (agent.Outcome, error) {
	t.Helper()
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(p.h.ConfigFile(t)); err != nil {
		t.Fatal(err)
	}
	p.out.Reset()
	p.in.Store(0)
	return agent.Run(context.Background(), cfg, agent.Options{
		Out: &p.out, Nix: &nix.Runner{}, AgentVersion: "test",
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, n: &p.in}, nil
		},
	})
}

func (p *inProcess) mustRun(t *testing.T) agent.Outcome {
	t.Helper()
	o, err := p.run(t)
	if err != nil {
		t.Fatalf("tick: %v\n%s", err, p.out.String())
	}
	return o
}

// publish2 publishes the fleet and leaves alpha's chroot in publication
// format 2, as the format-2 publisher writes it: every file's content in
// objects/<aa>/<rest> (read-only, kept from earlier publications), the
// manifest saying "format": 2, no config/. While the publisher still writes
// format 1, its config/ is moved out of the chroot (and back before the
// next publication, which expects it); once it writes format 2 this only
// reads the manifest.
func (p *inProcess) publish2(t *testing.T) e2e.Published {
	t.Helper()
	chroot := p.env.Chroot("alpha")
	if _, err := os.Stat(p.aside); err == nil {
		os.RemoveAll(filepath.Join(chroot, manifest.ConfigDir))
		if err := os.Rename(p.aside, filepath.Join(chroot, manifest.ConfigDir)); err != nil {
			t.Fatal(err)
		}
	}
	pub := p.env.Publish(t)["alpha"]
	m := p.env.Manifest(t, "alpha")
	if m.Format == 2 {
		return pub
	}
	for _, f := range m.Files {
		dst := filepath.Join(chroot, manifest.ObjectPath(f.SHA256))
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(chroot, m.RemotePath(f)))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst+".tmp", data, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".tmp", dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(filepath.Join(chroot, manifest.ConfigDir), p.aside); err != nil {
		t.Fatal(err)
	}
	m.Format = 2
	p.env.WriteManifest(t, "alpha", m)
	return pub
}

// localObjects counts the objects in the agent's store.
func localObjects(t *testing.T, stateDir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(stateDir, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

var storeFleet = func() fixture.Fleet {
	return fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{
			"modules/a.nix": "{ a = 1; }\n",
			"modules/b.nix": "{ b = 1; }\n",
			"modules/c.nix": "{ c = 1; }\n",
			"modules/d.nix": "{ d = 1; }\n",
		},
	}
}

// Over a real sshd, a format-2 update that changed one file downloads one
// object: counted in objects, in the report's bytes, and on the wire.
func TestFormat2OneFileUpdateDownloadsOneObject(t *testing.T) {
	p := startInProcess(t, storeFleet())
	v1 := p.publish2(t)
	o := p.mustRun(t)
	if o.Action != agent.ActionApplied || p.h.Current(t) != v1.Built {
		t.Fatalf("first tick: %+v\n%s", o, p.out.String())
	}
	all := len(p.env.Manifest(t, "alpha").Files)
	if o.Fetched != all || localObjects(t, p.h.StateDir) != all {
		t.Errorf("first tick fetched %d objects, the store holds %d; want the %d of the tree", o.Fetched, localObjects(t, p.h.StateDir), all)
	}
	p.mustRun(t)
	idle := p.in.Load()

	const changed = "{ b = 2; }\n"
	p.env.Fleet.Files["modules/b.nix"] = changed
	p.env.WriteFleet(t, p.env.Fleet)
	v2 := p.publish2(t)
	mdata, _ := os.ReadFile(filepath.Join(p.env.Chroot("alpha"), manifest.ManifestFile))
	o = p.mustRun(t)
	if o.Action != agent.ActionApplied || o.Report.AppliedVersion != v2.Version || p.h.Current(t) != v2.Built {
		t.Fatalf("update: %+v\n%s", o, p.out.String())
	}
	if o.Fetched != 1 || o.Report.BytesFetched != int64(len(changed)) {
		t.Errorf("one-file update fetched %d objects, %d bytes; want 1 object of %d bytes", o.Fetched, o.Report.BytesFetched, len(changed))
	}
	if !strings.Contains(p.out.String(), "1 of "+itoa(all)+" objects downloaded") {
		t.Errorf("output:\n%s", p.out.String())
	}
	// The update's bytes from the server beyond two idle ticks' (it opens
	// a second connection to confirm): the manifest, the object and SFTP
	// framing.
	extra := p.in.Load() - 2*idle
	t.Logf("bytes from the server: idle tick %d, one-file update %d (manifest %d, object %d)", idle, p.in.Load(), len(mdata), len(changed))
	if limit := int64(len(mdata) + len(changed) + 2048); extra > limit {
		t.Errorf("the update read %d bytes beyond two idle ticks, over the manifest + object + 2 kB = %d", extra, limit)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// A download that fails part way (an object gone from the server) keeps
// what it verified; the next tick, here for a publication that followed,
// downloads only what the store still lacks.
func TestFormat2InterruptedDownloadKeepsVerifiedObjects(t *testing.T) {
	p := startInProcess(t, storeFleet())
	p.publish2(t)
	p.mustRun(t)
	before := localObjects(t, p.h.StateDir)

	for _, k := range []string{"a", "b", "c"} {
		p.env.Fleet.Files["modules/"+k+".nix"] = "{ " + k + " = 2; }\n"
	}
	p.env.WriteFleet(t, p.env.Fleet)
	v2 := p.publish2(t)
	gone := manifest.ObjectPath(sha("{ c = 2; }\n"))
	if err := os.Remove(filepath.Join(p.env.Chroot("alpha"), gone)); err != nil {
		t.Fatal(err)
	}
	o, err := p.run(t)
	if err == nil || o.Action != agent.ActionFailed {
		t.Fatalf("tick with an object missing: %+v, %v", o, err)
	}
	if msg := o.Report.Error; !strings.Contains(msg, "fetch "+gone+" (modules/c.nix)") || !strings.Contains(msg, "not exist") {
		t.Errorf("report error %q does not name the missing object", msg)
	}
	if o.Fetched != 2 || localObjects(t, p.h.StateDir) != before+2 {
		t.Errorf("failed tick fetched %d objects, store %d → %d; want the 2 it could verify kept", o.Fetched, before, localObjects(t, p.h.StateDir))
	}
	if !strings.Contains(p.out.String(), "2 objects") || !strings.Contains(p.out.String(), "kept for the next attempt") {
		t.Errorf("output does not say what was kept:\n%s", p.out.String())
	}
	if o.Report.AppliedVersion == v2.Version {
		t.Fatal("applied without a file")
	}

	// The next publication (d changed; c's object is back) comes before the retry.
	p.env.Fleet.Files["modules/d.nix"] = "{ d = 3; }\n"
	p.env.WriteFleet(t, p.env.Fleet)
	v3 := p.publish2(t)
	o = p.mustRun(t)
	if o.Action != agent.ActionApplied || o.Report.AppliedVersion != v3.Version || p.h.Current(t) != v3.Built {
		t.Fatalf("tick after the failure: %+v\n%s", o, p.out.String())
	}
	if o.Fetched != 2 {
		t.Errorf("the next publication fetched %d objects; want 2 (c and d), a and b were kept\n%s", o.Fetched, p.out.String())
	}
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// A tree left partial in the state directory (what a kill during an
// in-place delete left before) is not reused: the agent checks it against
// the manifest, makes it again from its store, and downloads nothing.
func TestPartialLocalTreeIsNotReused(t *testing.T) {
	p := startInProcess(t, storeFleet())
	v1 := p.publish2(t)
	p.mustRun(t)
	p.env.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	p.env.WriteFleet(t, p.env.Fleet)
	p.publish2(t)
	p.mustRun(t)

	tree := filepath.Join(p.h.StateDir, "config", v1.Version)
	for _, f := range []string{"modules/b.nix", "modules/c.nix"} {
		if err := os.Remove(filepath.Join(tree, f)); err != nil {
			t.Fatalf("the previous tree should be kept: %v", err)
		}
	}
	// The fleet goes back to v1's content: the same version.
	p.env.Fleet.Files["modules/a.nix"] = "{ a = 1; }\n"
	p.env.WriteFleet(t, p.env.Fleet)
	if again := p.publish2(t); again.Version != v1.Version {
		t.Fatalf("republished %s, want v1 %s", again.Version, v1.Version)
	}
	o := p.mustRun(t)
	if o.Action != agent.ActionApplied || p.h.Current(t) != v1.Built || o.Fetched != 0 {
		t.Fatalf("tick over a partial tree: %+v\n%s", o, p.out.String())
	}
	if !strings.Contains(p.out.String(), "not reusing the local tree") || !strings.Contains(p.out.String(), "missing modules/b.nix and 1 more") {
		t.Errorf("output does not say why the tree was made again:\n%s", p.out.String())
	}
	for _, f := range p.env.Manifest(t, "alpha").Files {
		if _, err := os.Stat(filepath.Join(tree, f.Path)); err != nil {
			t.Errorf("the tree built from lacks %s", f.Path)
		}
	}
}

// A host in fetch mode asks for no tree file: its chroot may hold none at
// all (the objects are removed from the server here; a later manifest lists
// no files), and the update still goes through, over real SFTP. Trees left
// from build mode go.
func TestFetchModeAsksForNoTree(t *testing.T) {
	p := startInProcess(t, storeFleet())
	p.publish2(t)
	p.mustRun(t)
	p.h.Settings["mode"] = "fetch"

	step := func(name string, strip func(m *manifest.Manifest)) {
		t.Helper()
		p.env.Fleet.Files["modules/d.nix"] = "{ d = \"" + name + "\"; }\n"
		p.env.WriteFleet(t, p.env.Fleet)
		pub := p.publish2(t)
		chroot := p.env.Chroot("alpha")
		if err := os.RemoveAll(filepath.Join(chroot, manifest.ObjectsDir)); err != nil {
			t.Fatal(err)
		}
		m := p.env.Manifest(t, "alpha")
		strip(m)
		p.env.WriteManifest(t, "alpha", m)
		o, err := p.run(t)
		if err != nil || o.Action != agent.ActionApplied || p.h.Current(t) != pub.Built {
			t.Fatalf("%s: fetch-mode tick: %+v, %v\n%s", name, o, err, p.out.String())
		}
		if o.Fetched != 0 || o.Report.BytesFetched != 0 {
			t.Errorf("%s: fetch mode downloaded %d objects, %d bytes", name, o.Fetched, o.Report.BytesFetched)
		}
		if n := localObjects(t, p.h.StateDir); n != 0 {
			t.Errorf("%s: the store still holds %d objects", name, n)
		}
		if entries, _ := os.ReadDir(filepath.Join(p.h.StateDir, "config")); len(entries) != 0 {
			t.Errorf("%s: local trees left in fetch mode: %v", name, entries)
		}
	}
	step("files listed, none on the server", func(m *manifest.Manifest) {
		if len(m.Files) == 0 {
			t.Fatal("the publication lists no files: nothing tested")
		}
	})
	step("no files listed", func(m *manifest.Manifest) { m.Files = nil })
}
