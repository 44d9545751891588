package publish_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ownership of chroots)")
	}
}

func nobody(t *testing.T) (uid, gid int) {
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

func owner(t *testing.T, p string) (uid, gid int, perm os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode().Perm()
}

func TestFirstDeployLayout(t *testing.T) {
	requireRoot(t)
	nuid, ngid := nobody(t)
	dir := newFleet(t, map[string]string{"lib/tool.sh": "#!/bin/sh\n"}, true)
	os.Chmod(filepath.Join(dir, "lib/tool.sh"), 0o755)
	root := filepath.Join(t.TempDir(), "chroot")
	when := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	rs := deploy(t, root, targets(dir, "alpha", "beta"), func(o *publish.Options) { o.Now = func() time.Time { return when } })
	mustOK(t, rs, publish.StatusPublished)

	for _, host := range []string{"alpha", "beta"} {
		m := verifyExact(t, root, host)
		hostDir := filepath.Join(root, host)
		for _, c := range []struct {
			path     string
			uid, gid int
			perm     os.FileMode
		}{
			{hostDir, 0, 0, 0o755},
			{filepath.Join(hostDir, "objects"), 0, 0, 0o755},
			{objectFile(root, host, fileOf(t, m, "flake.nix")), 0, 0, 0o444},
			// One object per content, whatever its mode: the manifest
			// carries the executable bit.
			{objectFile(root, host, fileOf(t, m, "lib/tool.sh")), 0, 0, 0o444},
			{filepath.Join(hostDir, "manifest.json"), 0, 0, 0o644},
			{filepath.Join(hostDir, "reports"), nuid, ngid, 0o755},
			{filepath.Join(root, publish.PoolDir), 0, 0, 0o700},
			{filepath.Join(root, publish.StateDir), 0, 0, 0o700},
			{filepath.Join(root, publish.StateDir, host), 0, 0, 0o700},
		} {
			uid, gid, perm := owner(t, c.path)
			if uid != c.uid || gid != c.gid || perm != c.perm {
				t.Errorf("%s: %d:%d %04o, want %d:%d %04o", c.path, uid, gid, perm, c.uid, c.gid, c.perm)
			}
		}
		if m.Format != 2 || m.Host != host || m.Flake.Attr != "nixosConfigurations."+host || m.Flake.Layout != "flake" ||
			!m.PublishedAt.Equal(when) || !strings.HasSuffix(m.ExpectedToplevel, "-nixos-system-"+host) {
			t.Errorf("manifest of %s: %+v", host, m)
		}
		if m.Version != rs[0].Version {
			t.Errorf("%s: version %s, alpha has %s: same tree, same version", host, m.Version, rs[0].Version)
		}
		for _, f := range m.Files {
			if f.Path == "lib/tool.sh" && f.Mode != 0o755 || f.Path == "flake.nix" && f.Mode != 0o644 {
				t.Errorf("%s: mode %o", f.Path, f.Mode)
			}
		}
		if _, err := os.Stat(filepath.Join(hostDir, "config")); !os.IsNotExist(err) {
			t.Errorf("%s has a config/: %v", host, err)
		}
	}
	// Both hosts get the same flake: each content is written once into
	// the pool, and both chroots link it.
	m := readManifest(t, root, "alpha")
	distinct := map[string]bool{}
	for _, f := range m.Files {
		distinct[f.SHA256] = true
	}
	copied, shared := 0, 0
	for _, r := range rs {
		copied, shared = copied+r.Copied, shared+r.Shared
		if r.Linked != 0 {
			t.Errorf("%s: %d objects already there on a first deploy", r.Host, r.Linked)
		}
	}
	if copied != len(distinct) || shared != len(distinct) {
		t.Errorf("first deploy of 2 hosts × %d contents: %d copied, %d shared", len(distinct), copied, shared)
	}
	f := fileOf(t, m, "flake.nix")
	a, _ := os.Stat(objectFile(root, "alpha", f))
	b, _ := os.Stat(objectFile(root, "beta", f))
	pool, _ := os.Stat(filepath.Join(root, publish.PoolDir, f.SHA256[:2], f.SHA256[2:]))
	if !os.SameFile(a, b) || !os.SameFile(a, pool) {
		t.Error("alpha's, beta's and the pool's flake.nix are not one file")
	}
	if n := a.Sys().(*syscall.Stat_t).Nlink; n != 3 {
		t.Errorf("flake.nix has %d links, want 3 (pool, alpha, beta)", n)
	}
}

func TestUnchangedRedeployWritesNothing(t *testing.T) {
	dir := newFleet(t, nil, true)
	root := filepath.Join(t.TempDir(), "chroot")
	mustOK(t, deploy(t, root, targets(dir, "alpha", "beta")), publish.StatusPublished)
	before := snapshot(t, root)
	// Unknown expected system (--no-build) keeps the known one: unchanged too.
	ts := targets(dir, "alpha", "beta")
	ts[1].ExpectedToplevel = ""
	rs := deploy(t, root, ts)
	mustOK(t, rs, publish.StatusUnchanged)
	if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
		t.Errorf("an unchanged redeploy wrote:\n%s", strings.Join(d, "\n"))
	}
	for _, r := range rs {
		if r.BytesWritten != 0 || r.Copied != 0 {
			t.Errorf("%s: %d bytes written, %d copied", r.Host, r.BytesWritten, r.Copied)
		}
	}
	if m := readManifest(t, root, "beta"); m.ExpectedToplevel == "" {
		t.Error("beta lost its expected system")
	}
}

func TestOneFileChangeLinksTheRest(t *testing.T) {
	files := map[string]string{"lib/a.nix": "a1\n", "lib/b.nix": "b\n", "lib/c.nix": "c\n"}
	dir := newFleet(t, files, true)
	root := filepath.Join(t.TempDir(), "chroot")
	clk := newClock()
	mustOK(t, deploy(t, root, targets(dir, "alpha"), clk.opt), publish.StatusPublished)
	m1 := readManifest(t, root, "alpha")
	a1 := fileOf(t, m1, "lib/a.nix")

	files["lib/a.nix"] = "a2\n"
	writeFleet(t, dir, files, true)
	before := snapshot(t, filepath.Join(root, "alpha/objects"))
	rs := deploy(t, root, targets(dir, "alpha"), clk.opt)
	mustOK(t, rs, publish.StatusPublished)
	m2 := verify(t, root, "alpha")
	if m2.Version == m1.Version || rs[0].Previous != m1.Version {
		t.Fatalf("version %s (previous %s) after a change of %s", m2.Version, rs[0].Previous, m1.Version)
	}
	// One new object, the manifest, and nothing else.
	if rs[0].Copied != 1 || rs[0].Shared != 0 || rs[0].Linked != len(sumsOf(m2))-1 {
		t.Errorf("copied %d, shared %d, linked %d of %d", rs[0].Copied, rs[0].Shared, rs[0].Linked, len(sumsOf(m2)))
	}
	manifestSize := int64(len(mustRead(t, filepath.Join(root, "alpha/manifest.json"))))
	if rs[0].BytesWritten != 3+manifestSize {
		t.Errorf("%d bytes written, want the file (3) and the manifest (%d)", rs[0].BytesWritten, manifestSize)
	}
	a2 := fileOf(t, m2, "lib/a.nix")
	d := diffPublished(before, snapshot(t, filepath.Join(root, "alpha/objects")))
	if len(d) == 0 {
		t.Error("no object created")
	}
	for _, c := range d {
		if !strings.HasPrefix(c, "created ") || !strings.Contains(c, a2.SHA256[2:]) && !strings.HasSuffix(c, "/"+a2.SHA256[:2]) {
			t.Errorf("a one-file change did more in objects/: %s", c)
		}
	}
	// The old content stays for readers of the old manifest.
	if got := mustRead(t, objectFile(root, "alpha", a1)); got != "a1\n" {
		t.Errorf("the previous version's object: %q", got)
	}

	// A third version, past the retention period: the first version's
	// own object leaves; the second's stays (it was live a moment ago).
	files["lib/b.nix"] = "b2\n"
	writeFleet(t, dir, files, true)
	clk.Advance(publish.DefaultRetention + time.Second)
	rs = deploy(t, root, targets(dir, "alpha"), clk.opt)
	mustOK(t, rs, publish.StatusPublished)
	if len(rs[0].Pruned) != 1 || rs[0].Pruned[0] != m1.Version || rs[0].Removed != 1 {
		t.Errorf("pruned %v, %d objects removed, want [%s] and its one object", rs[0].Pruned, rs[0].Removed, m1.Version)
	}
	if _, err := os.Stat(objectFile(root, "alpha", a1)); !os.IsNotExist(err) {
		t.Errorf("the first version's object is still there: %v", err)
	}
	pooled := filepath.Join(root, publish.PoolDir, a1.SHA256[:2], a1.SHA256[2:])
	if _, err := os.Stat(pooled); !os.IsNotExist(err) {
		t.Errorf("the pool kept an object no chroot links: %v", err)
	}
	for _, f := range m2.Files {
		if _, err := os.Stat(objectFile(root, "alpha", f)); err != nil {
			t.Errorf("the second version's %s left: %v", f.Path, err)
		}
	}

	// Reverting to the second version's content writes no object.
	files["lib/b.nix"] = "b\n"
	writeFleet(t, dir, files, true)
	before = snapshot(t, filepath.Join(root, "alpha/objects"))
	rs = deploy(t, root, targets(dir, "alpha"), clk.opt)
	mustOK(t, rs, publish.StatusPublished)
	if rs[0].Version != m2.Version || rs[0].Copied+rs[0].Shared != 0 {
		t.Errorf("revert: version %s (want %s), %d copied %d shared", rs[0].Version, m2.Version, rs[0].Copied, rs[0].Shared)
	}
	if d := diffPublished(before, snapshot(t, filepath.Join(root, "alpha/objects"))); len(d) > 0 {
		t.Errorf("revert rewrote objects: %v", d)
	}
	verify(t, root, "alpha")
}

func sumsOf(m *manifest.Manifest) map[string]bool {
	out := map[string]bool{}
	for _, f := range m.Files {
		out[f.SHA256] = true
	}
	return out
}

// A host that cannot be published keeps its publication exactly as it was,
// and the other hosts go on.
func TestFailureKeepsPublication(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, dir string, ts []publish.Target)
		want    string
	}{
		{"escaping symlink", func(t *testing.T, dir string, ts []publish.Target) {
			symlink(t, "/etc/shadow", filepath.Join(dir, "shadow"))
			for i := range ts {
				ts[i].Source.Plain = true
			}
		}, "escapes the tree"},
		{"missing SFTP user", func(t *testing.T, dir string, ts []publish.Target) {
			writeFile(t, filepath.Join(dir, "new.nix"), "{ }", 0o644)
			run(t, dir, "git", "add", "new.nix")
			ts[0].Host.Options.User = "bento-no-such-user"
		}, `SFTP user "bento-no-such-user" does not exist on this server: add it with services.bento-server.hosts (or: useradd`},
		{"SFTP user is root", func(t *testing.T, dir string, ts []publish.Target) {
			writeFile(t, filepath.Join(dir, "new.nix"), "{ }", 0o644)
			run(t, dir, "git", "add", "new.nix")
			ts[0].Host.Options.User = "root"
		}, "is root"},
		{"secrets writer fails", func(t *testing.T, dir string, ts []publish.Target) {
			ts[0].Extra = &publish.Extra{
				Files: []manifest.File{byteFile("k")},
				Write: func(context.Context, string) error { return errors.New("vault sealed") },
			}
		}, "secrets: vault sealed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newFleet(t, nil, true)
			root := filepath.Join(t.TempDir(), "chroot")
			mustOK(t, deploy(t, root, targets(dir, "alpha", "beta")), publish.StatusPublished)
			before := snapshot(t, filepath.Join(root, "alpha"))
			manifestBefore := mustRead(t, filepath.Join(root, "alpha/manifest.json"))

			ts := targets(dir, "alpha", "beta")
			tc.breakIt(t, dir, ts)
			rs := deploy(t, root, ts)
			if rs[0].Status != publish.StatusFailed || rs[0].Err == nil || !strings.Contains(rs[0].Err.Error(), tc.want) {
				t.Fatalf("alpha: %s %v, want failed saying %q", rs[0].Status, rs[0].Err, tc.want)
			}
			if !strings.HasPrefix(rs[0].Err.Error(), "host alpha: publish: ") {
				t.Errorf("error does not name the host: %v", rs[0].Err)
			}
			if d := diffPublished(before, snapshot(t, filepath.Join(root, "alpha"))); len(d) > 0 {
				t.Errorf("a failed publication changed alpha's chroot:\n%s", strings.Join(d, "\n"))
			}
			if mustRead(t, filepath.Join(root, "alpha/manifest.json")) != manifestBefore {
				t.Error("manifest changed")
			}
			if tc.name != "escaping symlink" && !rs[1].OK() {
				t.Errorf("beta failed too: %v", rs[1].Err)
			}
		})
	}
}

// A file edited between hashing and copying fails the host: the manifest
// would otherwise announce a hash its file does not have.
func TestSourceChangedDuringPublish(t *testing.T) {
	dir := newFleet(t, map[string]string{"lib/a.nix": "a\n"}, false)
	root := filepath.Join(t.TempDir(), "chroot")
	ts := targets(dir, "alpha")
	ts[0].Source.Plain = true
	p := open(t, root)
	if _, err := p.Tree(context.Background(), ts[0].Source); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "lib/a.nix"), "edited\n", 0o644)
	rs := p.Publish(context.Background(), ts)
	if rs[0].OK() || !errors.Is(rs[0].Err, publish.ErrChanged) {
		t.Fatalf("got %s %v, want ErrChanged", rs[0].Status, rs[0].Err)
	}
	if _, err := os.Stat(filepath.Join(root, "alpha/manifest.json")); !os.IsNotExist(err) {
		t.Error("a manifest was written")
	}
	if got := listFiles(t, filepath.Join(root, "alpha/config")); len(got) != 0 {
		t.Errorf("left behind: %v", got)
	}
}

// Same tree, new expected system: only the manifest is rewritten.
func TestExpectedSystemChangeRewritesManifestOnly(t *testing.T) {
	dir := newFleet(t, nil, true)
	root := filepath.Join(t.TempDir(), "chroot")
	ts := targets(dir, "alpha")
	ts[0].ExpectedToplevel = "" // forced publication of a failed build
	mustOK(t, deploy(t, root, ts), publish.StatusPublished)
	m1 := readManifest(t, root, "alpha")
	cfg := filepath.Join(root, "alpha/objects")
	before := snapshot(t, cfg)

	rs := deploy(t, root, targets(dir, "alpha"))
	mustOK(t, rs, publish.StatusUpdated)
	m2 := verify(t, root, "alpha")
	if m2.Version != m1.Version || m2.ExpectedToplevel == "" || m1.ExpectedToplevel != "" {
		t.Errorf("manifest %+v after %+v", m2, m1)
	}
	if d := diffSnapshots(before, snapshot(t, cfg)); len(d) > 0 {
		t.Errorf("objects/ changed: %v", d)
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	dir := newFleet(t, map[string]string{"lib/a.nix": "a\n"}, true)
	base := t.TempDir()
	root := filepath.Join(base, "chroot")
	dry := func(o *publish.Options) { o.DryRun = true }
	rs := deploy(t, root, targets(dir, "alpha"), dry)
	mustOK(t, rs, publish.StatusPublished)
	if !rs[0].DryRun || rs[0].Copied != rs[0].Files {
		t.Errorf("dry run result %+v", rs[0])
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("dry run created the chroot root: %v", err)
	}
	mustOK(t, deploy(t, root, targets(dir, "alpha")), publish.StatusPublished)
	writeFleet(t, dir, map[string]string{"lib/a.nix": "a2\n"}, true)
	before := snapshot(t, base)
	rs = deploy(t, root, targets(dir, "alpha"), dry)
	mustOK(t, rs, publish.StatusPublished)
	if rs[0].Copied != 1 || rs[0].Linked != rs[0].Files-1 {
		t.Errorf("dry run plans %d copies, %d links of %d", rs[0].Copied, rs[0].Linked, rs[0].Files)
	}
	if d := diffSnapshots(before, snapshot(t, base)); len(d) > 0 {
		t.Errorf("dry run wrote: %v", d)
	}
}

// Extra files (secrets) are part of the version and land in secrets/<version>.
func TestExtraFiles(t *testing.T) {
	dir := newFleet(t, nil, true)
	root := filepath.Join(t.TempDir(), "chroot")
	mustOK(t, deploy(t, root, targets(dir, "alpha")), publish.StatusPublished)
	v1 := readManifest(t, root, "alpha").Version

	ts := targets(dir, "alpha")
	var wrote string
	ts[0].Extra = &publish.Extra{
		Files: []manifest.File{byteFile("k")},
		Write: func(_ context.Context, d string) error {
			wrote = d
			return os.WriteFile(filepath.Join(d, "k"), []byte("k"), 0o400)
		},
	}
	rs := deploy(t, root, ts)
	mustOK(t, rs, publish.StatusPublished)
	m := verify(t, root, "alpha")
	if m.Version == v1 || len(m.Secrets) != 1 || m.Secrets[0].Path != "k" {
		t.Fatalf("manifest %+v", m)
	}
	if got := mustRead(t, filepath.Join(root, "alpha/secrets", m.Version, "k")); got != "k" {
		t.Errorf("secret %q", got)
	}
	if filepath.Dir(wrote) != filepath.Join(root, "alpha/secrets") || filepath.Base(wrote) == m.Version {
		t.Errorf("Write got %s, want a temporary directory beside the final one", wrote)
	}
	// Unchanged with the same secrets; changing them only relinks config.
	mustOK(t, deploy(t, root, ts), publish.StatusUnchanged)
	ts[0].Extra.Files = []manifest.File{byteFile("k2")}
	rs = deploy(t, root, ts)
	mustOK(t, rs, publish.StatusPublished)
	if rs[0].Copied != 0 {
		t.Errorf("a secret change copied %d config files", rs[0].Copied)
	}
}

func TestHostNameCannotEscape(t *testing.T) {
	dir := newFleet(t, nil, true)
	base := t.TempDir()
	root := filepath.Join(base, "chroot")
	ts := append(targets(dir, "alpha"), targets(dir, "alpha")...)
	rs := deploy(t, root, ts)
	if !rs[0].OK() || rs[1].OK() || !strings.Contains(rs[1].Err.Error(), "host alpha: publish: listed twice") {
		t.Errorf("alpha twice: %v, %v", rs[0].Err, rs[1].Err)
	}
	os.RemoveAll(root)
	for _, name := range []string{"../evil", "..", "a/b", ".hidden", ""} {
		ts := targets(dir, "alpha")
		ts[0].Host.Name = name
		rs := deploy(t, root, ts)
		if rs[0].OK() || !strings.Contains(rs[0].Err.Error(), "invalid host name") {
			t.Errorf("host %q: %s %v", name, rs[0].Status, rs[0].Err)
		}
	}
	entries, _ := os.ReadDir(base)
	entries2, _ := os.ReadDir(root)
	if len(entries) != 1 || len(entries2) != 1 {
		t.Errorf("something was created: %v %v", entries, entries2)
	}
}

// The state directory's own entries (the rollout record, the history
// database, the unfinished marker) are not a host's to share.
func TestReservedHostNamesAreRefused(t *testing.T) {
	dir := newFleet(t, nil, true)
	root := filepath.Join(t.TempDir(), "chroot")
	for _, name := range publish.ReservedNames {
		ts := targets(dir, "alpha")
		ts[0].Host.Name = name
		rs := deploy(t, root, ts)
		if rs[0].OK() || !strings.Contains(rs[0].Err.Error(), "is reserved") {
			t.Errorf("host %q: %s %v, want refused as reserved", name, rs[0].Status, rs[0].Err)
		}
		if _, err := os.Lstat(filepath.Join(root, name)); err == nil {
			t.Errorf("host %q: a chroot was created", name)
		}
	}
	rs := deploy(t, root, targets(dir, "alpha"))
	mustOK(t, rs, publish.StatusPublished)
}

func TestLockSerializesDeploys(t *testing.T) {
	root := filepath.Join(t.TempDir(), "chroot")
	first := open(t, root)
	_, err := publish.Open(context.Background(), publish.Options{Root: root})
	if !errors.Is(err, publish.ErrLocked) || !strings.Contains(err.Error(), "--lock-wait") {
		t.Fatalf("second deploy: %v, want ErrLocked with a hint", err)
	}

	// A waiting deploy starts only once the first one is done: run both
	// on the same hosts with different content and record the order.
	dir := newFleet(t, map[string]string{"lib/a.nix": "1\n"}, false)
	dir2 := newFleet(t, map[string]string{"lib/a.nix": "2\n"}, false)
	events := make(chan string, 4)
	done := make(chan []publish.Result)
	go func() {
		p, err := publish.Open(context.Background(), publish.Options{Root: root, LockWait: time.Minute})
		if err != nil {
			events <- "error " + err.Error()
			done <- nil
			return
		}
		events <- "second locked"
		rs := p.Publish(context.Background(), targets(dir2, "alpha"))
		p.Close()
		done <- rs
	}()
	rs := first.Publish(context.Background(), targets(dir, "alpha"))
	mustOK(t, rs, publish.StatusPublished)
	select {
	case e := <-events:
		t.Fatalf("second deploy got in while the first held the lock: %s", e)
	default:
	}
	events <- "first released"
	first.Close()
	rs2 := <-done
	if got := []string{<-events, <-events}; got[0] != "first released" || got[1] != "second locked" {
		t.Fatalf("order %v", got)
	}
	mustOK(t, rs2, publish.StatusPublished)
	if rs2[0].Previous != rs[0].Version {
		t.Errorf("second deploy saw previous %q, want the first's %q", rs2[0].Previous, rs[0].Version)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	held := open(t, root)
	defer held.Close()
	if _, err := publish.Open(ctx, publish.Options{Root: root, LockWait: time.Hour}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}

func TestOrphansAndPrune(t *testing.T) {
	dir := newFleet(t, nil, true)
	root := filepath.Join(t.TempDir(), "chroot")
	ts := targets(dir, "alpha", "beta", "gamma", "delta")
	mustOK(t, deploy(t, root, ts), publish.StatusPublished)
	writeFile(t, filepath.Join(root, "beta/reports/status.json"), "{}", 0o644)
	writeFile(t, filepath.Join(root, "lost+found/x"), "not bento", 0o644)
	writeFile(t, filepath.Join(root, "README"), "operator notes", 0o644)

	p := open(t, root)
	known := []string{"alpha", "delta"}
	orphans, err := p.Orphans(known)
	if err != nil {
		t.Fatal(err)
	}
	if len(orphans) != 2 || orphans[0].Host != "beta" || orphans[1].Host != "gamma" {
		t.Fatalf("orphans %+v, want beta and gamma", orphans)
	}
	alphaBefore := snapshot(t, filepath.Join(root, "alpha"))
	if err := p.Prune(orphans[0], false); err != nil {
		t.Fatal(err)
	}
	if err := p.Prune(orphans[1], true); err != nil {
		t.Fatal(err)
	}
	if got := listFiles(t, filepath.Join(root, "beta")); strings.Join(got, " ") != "reports/status.json" {
		t.Errorf("beta after prune: %v, want only its reports", got)
	}
	if _, err := os.Stat(filepath.Join(root, "gamma")); !os.IsNotExist(err) {
		t.Errorf("gamma still there: %v", err)
	}
	for _, keep := range []string{"lost+found/x", "README", "delta/manifest.json"} {
		if _, err := os.Stat(filepath.Join(root, keep)); err != nil {
			t.Errorf("%s: %v", keep, err)
		}
	}
	if d := diffPublished(alphaBefore, snapshot(t, filepath.Join(root, "alpha"))); len(d) > 0 {
		t.Errorf("alpha changed: %v", d)
	}
	orphans, _ = p.Orphans(known)
	if len(orphans) != 1 || orphans[0].Host != "beta" || !orphans[0].ReportsOnly {
		t.Errorf("after prune: %+v, want beta with reports only", orphans)
	}
}

func TestCheckRoot(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	writeFile(t, file, "x", 0o644)
	if _, err := publish.CheckRoot(file, true); err == nil || !strings.Contains(err.Error(), "is a file, not a directory") {
		t.Errorf("file: %v", err)
	}
	if _, err := publish.CheckRoot(filepath.Join(file, "sub"), true); err == nil || !strings.Contains(err.Error(), "is a file") {
		t.Errorf("under a file: %v", err)
	}
	root := filepath.Join(base, "chroot")
	warnings, err := publish.CheckRoot(root, true)
	if err != nil {
		t.Fatal(err)
	}
	// t.TempDir() lives under /tmp, which is world-writable: sshd refuses it.
	all := strings.Join(warnings, "\n")
	if !strings.Contains(all, "sshd will refuse ChrootDirectory") || !strings.Contains(all, "writable by group or others") {
		t.Errorf("warnings %q", all)
	}
	if os.Geteuid() == 0 {
		uid, gid := nobody(t)
		os.Chown(root, uid, gid)
		warnings, _ = publish.CheckRoot(root, true)
		if all := strings.Join(warnings, "\n"); !strings.Contains(all, root+" is owned by nobody, not root") {
			t.Errorf("warnings %q", all)
		}
	}
}

// A classic host publishes its own directory, with the shared code it
// links to (hosts/x/utils -> ../../utils) copied in.
func TestClassicHostTree(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	writeClassic(t, dir)
	h := fleet.Host{Name: "alpha", Layout: fleet.LayoutClassic, Ref: dir, Options: fleet.Options{User: "nobody"}}
	src, err := publish.SourceFor(h, dir)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "chroot")
	rs := deploy(t, root, []publish.Target{{Host: h, Source: src}})
	mustOK(t, rs, publish.StatusPublished)
	m := verify(t, root, "alpha")
	var paths []string
	for _, f := range m.Files {
		paths = append(paths, f.Path)
	}
	if strings.Join(paths, " ") != "configuration.nix utils/mkhost.nix" {
		t.Errorf("classic tree %v", paths)
	}
	if m.Flake.Layout != "classic" || m.Flake.Attr != "" {
		t.Errorf("flake %+v", m.Flake)
	}
	cfg := objectFile(root, "alpha", fileOf(t, m, "configuration.nix"))
	if !bytes.Contains([]byte(mustRead(t, cfg)), []byte("./utils/mkhost.nix")) {
		t.Error("configuration.nix not published")
	}
}

// A restrictive umask does not make published files unreadable for the
// host, nor change the version.
func TestUmask(t *testing.T) {
	dir := newFleet(t, map[string]string{"lib/tool.sh": "#!/bin/sh\n"}, false)
	os.Chmod(filepath.Join(dir, "lib/tool.sh"), 0o755)
	ts := targets(dir, "alpha")
	ts[0].Source.Plain = true
	want := deploy(t, filepath.Join(t.TempDir(), "chroot"), ts)[0].Version

	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	root := filepath.Join(t.TempDir(), "chroot")
	rs := deploy(t, root, ts)
	mustOK(t, rs, publish.StatusPublished)
	if rs[0].Version != want {
		t.Errorf("version %s under umask 077, %s otherwise", rs[0].Version, want)
	}
	m := verify(t, root, "alpha")
	tool := objectFile(root, "alpha", fileOf(t, m, "lib/tool.sh"))
	for p, perm := range map[string]os.FileMode{tool: 0o444, filepath.Dir(tool): 0o755, filepath.Join(root, "alpha/objects"): 0o755,
		objectFile(root, "alpha", fileOf(t, m, "flake.nix")): 0o444,
		filepath.Join(root, "alpha"):                         0o755, filepath.Join(root, "alpha/manifest.json"): 0o644} {
		if _, _, got := owner(t, p); got != perm {
			t.Errorf("%s: mode %04o under umask 077, want %04o", p, got, perm)
		}
	}
}

// A chroot root inside a plain fleet (a try-out in the fleet's directory)
// is never published into itself: the second deploy is unchanged.
func TestChrootRootInsideFleet(t *testing.T) {
	dir := newFleet(t, nil, false)
	root := filepath.Join(dir, "chroot")
	ts := targets(dir, "alpha")
	ts[0].Source.Plain = true
	rs := deploy(t, root, ts)
	mustOK(t, rs, publish.StatusPublished)
	rs = deploy(t, root, ts)
	mustOK(t, rs, publish.StatusUnchanged)
	if !strings.Contains(strings.Join(rs[0].Notes, "\n"), "left out chroot: it holds the chroots") {
		t.Errorf("notes %q", rs[0].Notes)
	}
}

// An unreadable manifest (edited by hand, truncated by a full disk) does
// not stop a publication, and the retention record still protects what
// the earlier manifests named.
func TestUnreadableManifest(t *testing.T) {
	files := map[string]string{"lib/a.nix": "1\n"}
	dir := newFleet(t, files, true)
	root := filepath.Join(t.TempDir(), "chroot")
	deploy(t, root, targets(dir, "alpha"))
	m1 := readManifest(t, root, "alpha")
	files["lib/a.nix"] = "2\n"
	writeFleet(t, dir, files, true)
	deploy(t, root, targets(dir, "alpha"))
	m2 := readManifest(t, root, "alpha")
	os.WriteFile(filepath.Join(root, "alpha/manifest.json"), []byte(`{"format":2,"host":"alpha","vers`), 0o644)

	files["lib/a.nix"] = "3\n"
	writeFleet(t, dir, files, true)
	rs := deploy(t, root, targets(dir, "alpha"))
	mustOK(t, rs, publish.StatusPublished)
	if !strings.Contains(strings.Join(rs[0].Notes, "\n"), "the current manifest is unreadable") {
		t.Errorf("notes %q", rs[0].Notes)
	}
	verify(t, root, "alpha")
	for _, m := range []*manifest.Manifest{m1, m2} {
		for _, f := range m.Files {
			if _, err := os.Stat(objectFile(root, "alpha", f)); err != nil {
				t.Errorf("version %s: %s removed within the retention period: %v", m.Version, f.Path, err)
			}
		}
	}
}
