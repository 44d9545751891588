package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

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
	// conns holds the bytes from the server of each connection of the
	// last tick, in order.
	conns []*atomic.Int64
	out   strings.Builder
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
	in []*atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	for _, k := range c.in {
		k.Add(int64(n))
	}
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
	p.conns = nil
	return agent.Run(context.Background(), cfg, agent.Options{
		Out: &p.out, Nix: &nix.Runner{}, AgentVersion: "test",
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			n := &atomic.Int64{}
			p.conns = append(p.conns, n)
			return &countingConn{Conn: c, in: []*atomic.Int64{&p.in, n}}, nil
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
// format 2 (publishAs).
func (p *inProcess) publish2(t *testing.T) e2e.Published { return p.publishAs(t, 2) }

// publishAs publishes the fleet and leaves alpha's chroot in the given
// publication format, whichever the publisher writes. Format 2: every
// file's content in objects/<aa>/<rest> (read-only, kept from earlier
// publications), the manifest saying "format": 2, no config/ (a format-1
// publisher's config/ is moved out of the chroot, and back before the next
// publication, which expects it). Format 1: every file at
// config/<version>/<path>, the manifest saying "format": 1.
func (p *inProcess) publishAs(t *testing.T, format int) e2e.Published {
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
	if m.Format == format {
		return pub
	}
	out := *m
	out.Format = format
	for _, f := range m.Files {
		dst := filepath.Join(chroot, out.RemotePath(f))
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
	if format == 2 {
		if err := os.Rename(filepath.Join(chroot, manifest.ConfigDir), p.aside); err != nil {
			t.Fatal(err)
		}
	}
	p.env.WriteManifest(t, "alpha", &out)
	return pub
}

// localObjects counts the objects in the agent's store (not the
// downloads in progress).
func localObjects(t *testing.T, stateDir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(stateDir, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return nil
	})
	return n
}

func storeFleet() fixture.Fleet {
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
	if len(p.conns) != 1 {
		t.Fatalf("an idle tick opened %d connections", len(p.conns))
	}

	// A new generation of the host: one file (hosts/alpha/default.nix)
	// and a new system, so the update switches and confirms.
	p.env.Update(t, "alpha", func(h *fixture.Host) { h.Generation = "2" })
	data, err := os.ReadFile(filepath.Join(p.env.FleetDir, "hosts", "alpha", "default.nix"))
	if err != nil {
		t.Fatal(err)
	}
	changed := string(data)
	v2 := p.publish2(t)
	if v2.Built == v1.Built {
		t.Fatal("the new generation built the same system")
	}
	mdata, _ := os.ReadFile(filepath.Join(p.env.Chroot("alpha"), manifest.ManifestFile))
	o = p.mustRun(t)
	if o.Action != agent.ActionApplied || o.Report.AppliedVersion != v2.Version || p.h.Current(t) != v2.Built {
		t.Fatalf("update: %+v\n%s", o, p.out.String())
	}
	if o.Fetched != 1 || o.Report.BytesFetched != int64(len(changed)) {
		t.Errorf("one-file update fetched %d objects, %d bytes; want 1 object of %d bytes", o.Fetched, o.Report.BytesFetched, len(changed))
	}
	if !strings.Contains(p.out.String(), "1 of "+strconv.Itoa(all)+" objects downloaded") {
		t.Errorf("output:\n%s", p.out.String())
	}
	// The goal: on the update's own connection, the bytes from
	// the server beyond an idle tick's are the manifest, the object and
	// no more than 2 kB of SFTP framing. (The second connection is the
	// post-switch confirmation.)
	if len(p.conns) != 2 {
		t.Fatalf("the update opened %d connections, want 2 (tick, confirmation)", len(p.conns))
	}
	extra := p.conns[0].Load() - idle
	t.Logf("bytes from the server: idle tick %d; one-file update %d on its connection (+%d: manifest %d, object %d), %d in all", idle, p.conns[0].Load(), extra, len(mdata), len(changed), p.in.Load())
	if limit := int64(len(mdata) + len(changed) + 2048); extra > limit {
		t.Errorf("the update read %d bytes more than an idle tick, over the manifest + object + 2 kB = %d", extra, limit)
	}
}

// A download that fails part way (an object gone from the server) keeps
// what it verified; the next tick, here for a publication that followed,
// downloads only what the store still lacks. Both publication formats.
func TestInterruptedDownloadKeepsVerifiedObjects(t *testing.T) {
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("format %d", format), func(t *testing.T) {
			p := startInProcess(t, storeFleet())
			publish := func() e2e.Published { return p.publishAs(t, format) }
			publish()
			p.mustRun(t)
			before := localObjects(t, p.h.StateDir)

			for _, k := range []string{"a", "b", "c"} {
				p.env.Fleet.Files["modules/"+k+".nix"] = "{ " + k + " = 2; }\n"
			}
			p.env.WriteFleet(t, p.env.Fleet)
			v2 := publish()
			m2 := p.env.Manifest(t, "alpha")
			if m2.Format != format {
				t.Fatalf("published format %d, want %d", m2.Format, format)
			}
			gone := m2.RemotePath(manifest.File{Path: "modules/c.nix", SHA256: sha("{ c = 2; }\n")})
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

			// The next publication (d changed; c is back) comes before the retry.
			p.env.Fleet.Files["modules/d.nix"] = "{ d = 3; }\n"
			p.env.WriteFleet(t, p.env.Fleet)
			v3 := publish()
			o = p.mustRun(t)
			if o.Action != agent.ActionApplied || o.Report.AppliedVersion != v3.Version || p.h.Current(t) != v3.Built {
				t.Fatalf("tick after the failure: %+v\n%s", o, p.out.String())
			}
			if o.Fetched != 2 {
				t.Errorf("the next publication fetched %d objects; want 2 (c and d), a and b were kept\n%s", o.Fetched, p.out.String())
			}
		})
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
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("format %d", format), func(t *testing.T) { partialTree(t, format) })
	}
}

func partialTree(t *testing.T, format int) {
	p := startInProcess(t, storeFleet())
	v1 := p.publishAs(t, format)
	p.mustRun(t)
	p.env.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	p.env.WriteFleet(t, p.env.Fleet)
	p.publishAs(t, format)
	p.mustRun(t)

	tree := filepath.Join(p.h.StateDir, "config", v1.Version)
	// lib/mkhost.nix is needed by the build: an agent that took the tree
	// as it is fails (or worse, with a file nothing imports, builds
	// without it).
	for _, f := range []string{"lib/mkhost.nix", "modules/b.nix"} {
		if err := os.Remove(filepath.Join(tree, f)); err != nil {
			t.Fatalf("the previous tree should be kept: %v", err)
		}
	}
	// The fleet goes back to v1's content: the same version.
	p.env.Fleet.Files["modules/a.nix"] = "{ a = 1; }\n"
	p.env.WriteFleet(t, p.env.Fleet)
	if again := p.publishAs(t, format); again.Version != v1.Version {
		t.Fatalf("republished %s, want v1 %s", again.Version, v1.Version)
	}
	o := p.mustRun(t)
	if o.Action != agent.ActionApplied || p.h.Current(t) != v1.Built || o.Fetched != 0 {
		t.Fatalf("tick over a partial tree: %+v\n%s", o, p.out.String())
	}
	if !strings.Contains(p.out.String(), "not reusing the local tree") || !strings.Contains(p.out.String(), "missing lib/mkhost.nix and 1 more") {
		t.Errorf("output does not say why the tree was made again:\n%s", p.out.String())
	}
	for _, f := range p.env.Manifest(t, "alpha").Files {
		if _, err := os.Stat(filepath.Join(tree, f.Path)); err != nil {
			t.Errorf("the tree built from lacks %s", f.Path)
		}
	}
}

// A host in fetch mode asks for no tree file: its chroot may hold none at
// all (the tree is removed from the server here; a later manifest lists
// no files), and the update still goes through, over real SFTP. Trees left
// from build mode go.
func TestFetchModeAsksForNoTree(t *testing.T) {
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("format %d", format), func(t *testing.T) { fetchModeNoTree(t, format) })
	}
}

func fetchModeNoTree(t *testing.T, format int) {
	p := startInProcess(t, storeFleet())
	p.publishAs(t, format)
	p.mustRun(t)
	p.h.Settings["mode"] = "fetch"

	step := func(name string, strip func(m *manifest.Manifest)) {
		t.Helper()
		p.env.Fleet.Files["modules/d.nix"] = "{ d = \"" + name + "\"; }\n"
		p.env.WriteFleet(t, p.env.Fleet)
		pub := p.publishAs(t, format)
		chroot := p.env.Chroot("alpha")
		for _, d := range []string{manifest.ObjectsDir, manifest.ConfigDir} {
			if err := os.RemoveAll(filepath.Join(chroot, d)); err != nil {
				t.Fatal(err)
			}
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

// A tick stopped (SIGTERM, Ctrl-C: its context cancelled) while a download
// hangs on the server returns at once, keeps every object it verified (and
// nothing unverified), and the next tick downloads only what the store
// lacks. The hang is a FIFO in place of an object: the SFTP server waits in
// open() (and, being single-threaded, serves nothing else meanwhile, so how
// many of the other objects landed first is up to the scheduler: the test
// counts them). Nine objects are missing and the agent fetches eight at a
// time, so the blocked ninth, last in the manifest, is asked for only once
// one of the others is verified: at least one is kept. The stop comes once
// the agent has begun the blocked download.
func TestFormat2StoppedDownloadResumesWithTheRest(t *testing.T) {
	f := storeFleet()
	for i := 1; i <= 9; i++ {
		f.Files[fmt.Sprintf("modules/m%d.nix", i)] = fmt.Sprintf("{ m%d = 1; }\n", i)
	}
	p := startInProcess(t, f)
	p.h.Settings["retry"] = map[string]any{"initialDelay": "1ms", "maxDelay": "1ms"}
	p.publish2(t)
	p.mustRun(t)
	before := localObjects(t, p.h.StateDir)

	for i := 1; i <= 9; i++ {
		p.env.Fleet.Files[fmt.Sprintf("modules/m%d.nix", i)] = fmt.Sprintf("{ m%d = 2; }\n", i)
	}
	p.env.WriteFleet(t, p.env.Fleet)
	v2 := p.publish2(t)
	sum := sha("{ m9 = 2; }\n")
	blocked := filepath.Join(p.env.Chroot("alpha"), manifest.ObjectPath(sum))
	content, err := os.ReadFile(blocked)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(blocked)
	if err := syscall.Mkfifo(blocked, 0o444); err != nil {
		t.Fatal(err)
	}
	unblock := func() {
		if w, err := os.OpenFile(blocked, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	}
	defer unblock()

	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(p.h.ConfigFile(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := agent.Run(ctx, cfg, agent.Options{Out: io.Discard, Nix: &nix.Runner{}})
		done <- err
	}()
	// The agent's temporary file for the blocked object: its download began.
	started := filepath.Join(p.h.StateDir, "objects", ".tmp-"+sum[:12]+"-*")
	deadline := time.Now().Add(time.Minute)
	for {
		if m, _ := filepath.Glob(started); len(m) > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the tick ended before the stop: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent never began downloading the blocked object")
		}
		time.Sleep(10 * time.Millisecond) // polling for the event
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("stopped tick: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stopped tick did not return while the server hung")
	}
	kept := localObjects(t, p.h.StateDir) - before
	if kept < 1 || kept > 8 {
		t.Fatalf("after the stop the store gained %d objects; want between 1 and the 8 unblocked ones", kept)
	}
	if _, err := os.Stat(filepath.Join(p.h.StateDir, "objects", sum[:2], sum[2:])); err == nil {
		t.Error("the blocked object is in the store, unverified")
	}
	t.Logf("objects verified before the stop: %d of 9", kept)

	unblock()
	os.Remove(blocked)
	if err := os.WriteFile(blocked, content, 0o444); err != nil {
		t.Fatal(err)
	}
	o := p.mustRun(t)
	if o.Action != agent.ActionApplied || o.Report.AppliedVersion != v2.Version {
		t.Fatalf("tick after the stop: %+v\n%s", o, p.out.String())
	}
	if o.Fetched != 9-kept {
		t.Errorf("tick after the stop fetched %d objects; want %d (the %d verified before were kept)\n%s", o.Fetched, 9-kept, kept, p.out.String())
	}
}
