package publish_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// flakeHost is a host of the flake fleet in dir, as discovery returns it.
func flakeHost(name, dir string) fleet.Host {
	return fleet.Host{
		Name: name, Managed: true, Enable: true, Layout: fleet.LayoutFlake, Ref: dir,
		Attr: fleet.ConfigAttr(name), Options: fleet.Options{User: "nobody"},
	}
}

// newFleet writes a small fixture fleet (hosts alpha, beta) with files.
func newFleet(t *testing.T, files map[string]string, git bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fleet")
	writeFleet(t, dir, files, git)
	return dir
}

func writeFleet(t *testing.T, dir string, files map[string]string, git bool) {
	t.Helper()
	err := fixture.Write(dir, fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}, {Name: "beta", Bento: &fixture.Bento{Enable: true}}},
		Files: files,
		Git:   git,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func targets(dir string, names ...string) []publish.Target {
	var ts []publish.Target
	for _, n := range names {
		h := flakeHost(n, dir)
		src, _ := publish.SourceFor(h, dir)
		ts = append(ts, publish.Target{Host: h, Source: src, ExpectedToplevel: "/nix/store/00000000000000000000000000000000-nixos-system-" + n})
	}
	return ts
}

func open(t *testing.T, root string, mod ...func(*publish.Options)) *publish.Publisher {
	t.Helper()
	// As root, like production: SFTP users checked, reports/ given to them.
	opts := publish.Options{Root: root, Users: os.Geteuid() == 0, Jobs: 2}
	for _, f := range mod {
		f(&opts)
	}
	p, err := publish.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// deploy opens the root, publishes the targets and closes, like one run
// of bento deploy.
func deploy(t *testing.T, root string, ts []publish.Target, mod ...func(*publish.Options)) []publish.Result {
	t.Helper()
	p := open(t, root, mod...)
	defer p.Close()
	return p.Publish(context.Background(), ts)
}

func mustOK(t *testing.T, rs []publish.Result, want publish.Status) {
	t.Helper()
	for _, r := range rs {
		if r.Err != nil || r.Status != want {
			t.Fatalf("host %s: status %s (err %v), want %s", r.Host, r.Status, r.Err, want)
		}
	}
}

func readManifest(t *testing.T, root, host string) *manifest.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, host, manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// verifyExact is verify, and objects/ holds nothing else.
func verifyExact(t *testing.T, root, host string) *manifest.Manifest {
	t.Helper()
	m := verify(t, root, host)
	want := map[string]bool{}
	for _, f := range m.Files {
		want[manifest.ObjectPath(f.SHA256)] = true
	}
	got := listFiles(t, filepath.Join(root, host, manifest.ObjectsDir))
	if len(got) != len(want) {
		t.Fatalf("host %s: objects/ holds %d objects %v, the manifest names %d", host, len(got), got, len(want))
	}
	return m
}

// verify checks what a client checks: the manifest is format 2 and every
// file it names is in the chroot's objects/ with the announced size and
// hash, read-only. objects/ may hold more (kept for the retention period).
func verify(t *testing.T, root, host string) *manifest.Manifest {
	t.Helper()
	m := readManifest(t, root, host)
	if m.Format != 2 {
		t.Fatalf("host %s: manifest format %d, want 2", host, m.Format)
	}
	for _, f := range m.Files {
		p := filepath.Join(root, host, filepath.FromSlash(m.RemotePath(f)))
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("host %s: %s: %v", host, f.Path, err)
		}
		if int64(len(data)) != f.Size || sha(data) != f.SHA256 {
			t.Fatalf("host %s: %s does not match its manifest line", host, f.Path)
		}
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o444 {
			t.Fatalf("host %s: object of %s: mode %v (%v), want 0444", host, f.Path, fi.Mode(), err)
		}
	}
	return m
}

// objectFile is where the chroot of host keeps f's content.
func objectFile(root, host string, f manifest.File) string {
	return filepath.Join(root, host, filepath.FromSlash(manifest.ObjectPath(f.SHA256)))
}

// fileOf returns the manifest line of path.
func fileOf(t *testing.T, m *manifest.Manifest, path string) manifest.File {
	t.Helper()
	for _, f := range m.Files {
		if f.Path == path {
			return f
		}
	}
	t.Fatalf("%s is not in the manifest of %s", path, m.Host)
	return manifest.File{}
}

// materialise builds the tree a manifest describes from the chroot's
// objects, as the agent does, and returns its directory.
func materialise(t *testing.T, root, host string, m *manifest.Manifest) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tree")
	for _, f := range m.Files {
		data, err := os.ReadFile(filepath.Join(root, host, filepath.FromSlash(m.RemotePath(f))))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, filepath.FromSlash(f.Path)), string(data), fs.FileMode(f.Mode))
	}
	return dir
}

// clock is a publication clock the test moves.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *clock) opt(o *publish.Options) { o.Now = c.Now }

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			r, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(r))
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// fileState is what a write would change about a file system object.
type fileState struct {
	ino, nlink   uint64
	size         int64
	mode         fs.FileMode
	mtime, ctime time.Time
}

// snapshot records the state of everything under dir, dir included.
func snapshot(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		out[p] = fileState{st.Ino, uint64(st.Nlink), st.Size, fi.Mode(),
			time.Unix(st.Mtim.Sec, st.Mtim.Nsec), time.Unix(st.Ctim.Sec, st.Ctim.Nsec)}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffSnapshots(before, after map[string]fileState) []string {
	var out []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			out = append(out, "removed "+p)
		case a != b:
			out = append(out, "changed "+p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			out = append(out, "created "+p)
		}
	}
	sort.Strings(out)
	return out
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), fixture.Env()...)
	cmd.Env = append(cmd.Env, "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

func writeFile(t *testing.T, p, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func writeClassic(t *testing.T, dir string) {
	t.Helper()
	err := fixture.Write(dir, fixture.Fleet{Classic: true, Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}}, {Name: "beta", Bento: &fixture.Bento{Enable: true}},
	}})
	if err != nil {
		t.Fatal(err)
	}
}

// diffPublished is diffSnapshots for what a client can see: which objects
// exist and, for files, their inode, size, mode and mtime. Directory times
// and ctimes move when a failed attempt's temporary directory comes and
// goes, and link counts when another host of the same deploy links the
// same content; neither changes anything published.
func diffPublished(before, after map[string]fileState) []string {
	strip := func(m map[string]fileState) map[string]fileState {
		out := map[string]fileState{}
		for p, s := range m {
			s.ctime, s.nlink = time.Time{}, 0
			if s.mode.IsDir() {
				s.mtime, s.size = time.Time{}, 0
			}
			out[p] = s
		}
		return out
	}
	return diffSnapshots(strip(before), strip(after))
}
