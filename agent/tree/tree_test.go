package tree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// chroot is a server-side chroot on the local disk, in either publication
// format: publish writes config/<version>/… (format 1) or objects/<aa>/<rest>
// (format 2); Download reads it as the SFTP server would and records what
// was asked for.
type chroot struct {
	root   string
	format int

	mu      sync.Mutex
	fetched []string
	// fail makes downloads of these remote paths fail.
	fail map[string]error
	// after runs after each successful download with the count so far.
	after func(n int)
}

func newChroot(t *testing.T, format int) *chroot {
	return &chroot{root: t.TempDir(), format: format, fail: map[string]error{}}
}

func (c *chroot) Download(ctx context.Context, remote string, w io.Writer, max int64) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c.mu.Lock()
	ferr := c.fail[remote]
	c.mu.Unlock()
	if ferr != nil {
		return 0, ferr
	}
	f, err := os.Open(filepath.Join(c.root, remote))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, max+1))
	if err == nil && n > max {
		err = fmt.Errorf("more than the expected %d bytes", max)
	}
	if err != nil {
		return n, err
	}
	c.mu.Lock()
	c.fetched = append(c.fetched, remote)
	k := len(c.fetched)
	after := c.after
	c.mu.Unlock()
	if after != nil {
		after(k)
	}
	return n, nil
}

func (c *chroot) downloads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.fetched)
}

func sum(content string) string {
	s := sha256.Sum256([]byte(content))
	return hex.EncodeToString(s[:])
}

// publish writes a version as the publisher of c's format would.
func (c *chroot) publish(t *testing.T, version string, files map[string]string) *manifest.Manifest {
	t.Helper()
	m := &manifest.Manifest{Format: c.format, Host: "alpha", Version: version}
	var paths []string
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		mode := uint32(0o444)
		if strings.HasSuffix(p, ".sh") {
			mode = 0o555
		}
		f := manifest.File{Path: p, Mode: mode, Size: int64(len(files[p])), SHA256: sum(files[p])}
		m.Files = append(m.Files, f)
		full := filepath.Join(c.root, m.RemotePath(f))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(full)
		if err := os.WriteFile(full, []byte(files[p]), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
}

func newStore(t *testing.T) *Store {
	dir := t.TempDir()
	return &Store{Dir: filepath.Join(dir, "config"), Objects: filepath.Join(dir, "objects"), Jobs: 1}
}

func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// objects lists the sums held in the store.
func objects(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(s.Objects, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(s.Objects, p)
			out = append(out, strings.ReplaceAll(rel, "/", ""))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func leftovers(t *testing.T, s *Store) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{s.Dir, s.Objects} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), stagingPrefix) || strings.HasPrefix(e.Name(), trashPrefix) || strings.HasPrefix(e.Name(), tmpPrefix) {
				out = append(out, e.Name())
			}
		}
	}
	return out
}

var v1Files = map[string]string{
	"flake.nix":               "{ outputs = _: { }; }\n",
	"hosts/alpha/default.nix": "{ generation = \"1\"; }\n",
	"hosts/beta/default.nix":  "{ generation = \"1\"; }\n", // the same content as alpha's
	"lib/mkhost.nix":          "spec: spec\n",
	"bin/hook.sh":             "#!/bin/sh\necho hi\n",
}

func with(base map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range base {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestStageDownloadsOnlyWhatTheStoreLacks(t *testing.T) {
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("format %d", format), func(t *testing.T) {
			srv := newChroot(t, format)
			s := newStore(t)
			s.Jobs = 4
			ctx := context.Background()

			m1 := srv.publish(t, "1111111111111111", v1Files)
			st, err := s.Stage(ctx, m1, srv)
			if err != nil {
				t.Fatal(err)
			}
			// Five files, four distinct contents: four downloads.
			if st.Files != 5 || st.Objects != 4 || st.Downloaded != 4 || srv.downloads() != 4 || st.Bytes == 0 {
				t.Errorf("first stage: %+v, %d downloads; want 4 objects downloaded for 5 files", st, srv.downloads())
			}
			if got := readTree(t, s.Path("1111111111111111")); fmt.Sprint(got) != fmt.Sprint(v1Files) {
				t.Errorf("tree v1 = %v, want %v", got, v1Files)
			}
			fi, err := os.Stat(filepath.Join(s.Path("1111111111111111"), "bin/hook.sh"))
			if err != nil || fi.Mode().Perm() != 0o555 {
				t.Errorf("bin/hook.sh should be read-only and executable: %v %v", fi.Mode(), err)
			}
			fi, err = os.Stat(filepath.Join(s.Path("1111111111111111"), "flake.nix"))
			if err != nil || fi.Mode().Perm() != 0o444 {
				t.Errorf("flake.nix should be read-only: %v %v", fi.Mode(), err)
			}
			if err := s.SetCurrent("1111111111111111"); err != nil {
				t.Fatal(err)
			}

			// v2 changes one file: only that one crosses the network.
			v2Files := with(v1Files, "hosts/alpha/default.nix", "{ generation = \"2\"; }\n")
			m2 := srv.publish(t, "2222222222222222", v2Files)
			before := srv.downloads()
			st, err = s.Stage(ctx, m2, srv, "1111111111111111")
			if err != nil {
				t.Fatal(err)
			}
			want := m2.RemotePath(manifest.File{Path: "hosts/alpha/default.nix", SHA256: sum(v2Files["hosts/alpha/default.nix"])})
			if got := srv.fetched[before:]; len(got) != 1 || got[0] != want || st.Downloaded != 1 || st.Held != 4 {
				t.Errorf("second stage fetched %v (stats %+v), want only %s", got, st, want)
			}
			if got := readTree(t, s.Path("2222222222222222")); fmt.Sprint(got) != fmt.Sprint(v2Files) {
				t.Errorf("tree v2 = %v, want %v", got, v2Files)
			}

			// Staging a version already held downloads nothing.
			before = srv.downloads()
			st, err = s.Stage(ctx, m2, srv, "1111111111111111")
			if err != nil || !st.Reused || srv.downloads() != before {
				t.Errorf("restaging v2: %+v %v, %d downloads", st, err, srv.downloads()-before)
			}

			if err := s.SetCurrent("2222222222222222"); err != nil {
				t.Fatal(err)
			}
			if cur, _ := s.Current(); cur != "2222222222222222" {
				t.Errorf("Current() = %q, want v2", cur)
			}
			if err := s.Prune("2222222222222222"); err != nil {
				t.Fatal(err)
			}
			if vs, _ := s.Versions(); fmt.Sprint(vs) != "[2222222222222222]" {
				t.Errorf("after Prune(v2): versions %v", vs)
			}
			if _, err := os.Stat(s.manifestPath("1111111111111111")); !os.IsNotExist(err) {
				t.Errorf("the pruned tree's manifest stayed: %v", err)
			}
			if l := leftovers(t, s); len(l) != 0 {
				t.Errorf("leftovers: %v", l)
			}
		})
	}
}

func TestStageRefusesBadContent(t *testing.T) {
	const v = "1111111111111111"
	obj := func(content string) string { return manifest.ObjectPath(sum(content)) }
	cases := []struct {
		name    string
		tamper  func(t *testing.T, srv *chroot, m *manifest.Manifest)
		wantErr string
	}{
		{"object differs from its hash", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			p := filepath.Join(srv.root, obj(v1Files["lib/mkhost.nix"]))
			os.Remove(p)
			os.WriteFile(p, []byte("spec: evil\n"), 0o444)
		}, "fetch " + obj(v1Files["lib/mkhost.nix"]) + " (lib/mkhost.nix): sha256"},
		{"object longer than listed", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			p := filepath.Join(srv.root, obj(v1Files["flake.nix"]))
			os.Remove(p)
			os.WriteFile(p, []byte(v1Files["flake.nix"]+"# more\n"), 0o444)
		}, "(flake.nix): more than the expected"},
		{"object shorter than listed", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			p := filepath.Join(srv.root, obj(v1Files["flake.nix"]))
			os.Remove(p)
			os.WriteFile(p, []byte("{"), 0o444)
		}, "(flake.nix): size 1, but the manifest says"},
		{"object missing on the server", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			os.Remove(filepath.Join(srv.root, obj(v1Files["flake.nix"])))
		}, obj(v1Files["flake.nix"]) + " (flake.nix): open"},
		{"path escaping the tree", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			m.Files[0].Path = "../../etc/passwd"
		}, `unsafe path "../../etc/passwd"`},
		{"absolute path", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			m.Files[0].Path = "/etc/passwd"
		}, `unsafe path "/etc/passwd"`},
		{"one hash with two sizes", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			m.Files[1].SHA256 = m.Files[0].SHA256
		}, "have the same sha256 but sizes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newChroot(t, 2)
			s := newStore(t)
			m := srv.publish(t, v, v1Files)
			tc.tamper(t, srv, m)
			_, err := s.Stage(context.Background(), m, srv)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Stage error = %v, want one containing %q", err, tc.wantErr)
			}
			if _, err := os.Stat(s.Path(v)); err == nil {
				t.Error("a refused version was put in place")
			}
			for _, o := range objects(t, s) {
				found := false
				for _, c := range v1Files {
					found = found || sum(c) == o
				}
				if !found {
					t.Errorf("the store holds %s, which no published content has", o)
				}
			}
			if l := leftovers(t, s); len(l) != 0 {
				t.Errorf("staging left behind: %v", l)
			}
		})
	}
}

// A damaged object in the store (same size, other content: only the hash
// tells) is not trusted by its name: the tree linking it no longer
// verifies, and the object is fetched again.
func TestDamagedObjectIsFetchedAgain(t *testing.T) {
	srv := newChroot(t, 2)
	s := newStore(t)
	ctx := context.Background()
	m1 := srv.publish(t, "1111111111111111", v1Files)
	if _, err := s.Stage(ctx, m1, srv); err != nil {
		t.Fatal(err)
	}
	p := s.objectPath(sum(v1Files["lib/mkhost.nix"]))
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, []byte("spec: EVIL\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := srv.downloads()
	st, err := s.Stage(ctx, m1, srv)
	if err != nil {
		t.Fatal(err)
	}
	if st.Reused || !strings.Contains(st.Discarded, "lib/mkhost.nix: sha256") || st.Refetched != 1 || st.Downloaded != 1 || srv.downloads()-before != 1 {
		t.Errorf("stage over a damaged object: %+v, %d downloads; want the tree discarded and that one object fetched again", st, srv.downloads()-before)
	}
	if got := readTree(t, s.Path("1111111111111111"))["lib/mkhost.nix"]; got != v1Files["lib/mkhost.nix"] {
		t.Errorf("lib/mkhost.nix = %q, want the published content", got)
	}
}

// A tree left partial (a kill while an older agent deleted it in place)
// is checked against its manifest and made again from the store, without
// a download.
func TestPartialTreeIsNotReused(t *testing.T) {
	cases := []struct {
		name    string
		damage  func(dir string)
		wantWhy string
	}{
		{"files deleted", func(dir string) {
			os.Remove(filepath.Join(dir, "lib/mkhost.nix"))
			os.Remove(filepath.Join(dir, "hosts/beta/default.nix"))
		}, "3 of 5 files; missing hosts/beta/default.nix and 1 more"},
		{"directory deleted", func(dir string) { os.RemoveAll(filepath.Join(dir, "hosts")) }, "missing hosts/alpha/default.nix and 1 more"},
		{"a file added", func(dir string) { os.WriteFile(filepath.Join(dir, "extra.nix"), []byte("{ }"), 0o644) }, "extra.nix: a file the manifest does not list"},
		{"exec bit lost", func(dir string) { os.Chmod(filepath.Join(dir, "bin/hook.sh"), 0o444) }, "bin/hook.sh: mode 444"},
		{"a file replaced by a link", func(dir string) {
			os.Remove(filepath.Join(dir, "flake.nix"))
			os.Symlink("/etc/passwd", filepath.Join(dir, "flake.nix"))
		}, "flake.nix: not a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newChroot(t, 2)
			s := newStore(t)
			ctx := context.Background()
			m := srv.publish(t, "1111111111111111", v1Files)
			if _, err := s.Stage(ctx, m, srv); err != nil {
				t.Fatal(err)
			}
			tc.damage(s.Path(m.Version))
			before := srv.downloads()
			st, err := s.Stage(ctx, m, srv)
			if err != nil {
				t.Fatal(err)
			}
			if st.Reused || !strings.Contains(st.Discarded, tc.wantWhy) || srv.downloads() != before {
				t.Errorf("stage over a damaged tree: %+v, %d downloads; want it discarded (%q) and made from the store", st, srv.downloads()-before, tc.wantWhy)
			}
			if got := readTree(t, s.Path(m.Version)); fmt.Sprint(got) != fmt.Sprint(v1Files) {
				t.Errorf("tree after the stage = %v", got)
			}
			if l := leftovers(t, s); len(l) != 0 {
				t.Errorf("leftovers: %v", l)
			}
		})
	}
}

// A download cut off after some objects keeps what it verified, and the
// next stage fetches only the rest. The cut is made by the Fetcher when it
// has delivered its second object: no timing involved.
func TestInterruptedDownloadResumes(t *testing.T) {
	srv := newChroot(t, 2)
	s := newStore(t)
	m := srv.publish(t, "1111111111111111", v1Files)
	ctx, cancel := context.WithCancel(context.Background())
	srv.after = func(n int) {
		if n == 2 {
			cancel()
		}
	}
	if _, err := s.Stage(ctx, m, srv); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted stage: %v, want context.Canceled", err)
	}
	if got := objects(t, s); len(got) != 2 {
		t.Errorf("after the interruption the store holds %v, want the 2 objects verified", got)
	}
	if _, err := os.Stat(s.Path(m.Version)); err == nil {
		t.Error("an interrupted stage put a tree in place")
	}
	srv.after = nil
	st, err := s.Stage(context.Background(), m, srv)
	if err != nil {
		t.Fatal(err)
	}
	if st.Downloaded != 2 || st.Held != 2 || srv.downloads() != 4 {
		t.Errorf("resumed stage: %+v, %d downloads in all; want the 2 missing objects only", st, srv.downloads())
	}
}

// A slow download that outlives two publications: v2 fails half way (one
// object is gone from the server), v3 follows; the stage of v3 keeps what
// v2 fetched and v3 still needs, drops what it does not, and downloads
// only what is new.
func TestDownloadOverlappingTwoPublications(t *testing.T) {
	srv := newChroot(t, 2)
	s := newStore(t)
	ctx := context.Background()
	m1 := srv.publish(t, "1111111111111111", v1Files)
	if _, err := s.Stage(ctx, m1, srv); err != nil {
		t.Fatal(err)
	}
	s.SetCurrent(m1.Version)
	v2Files := with(v1Files, "flake.nix", "{ v = 2; }\n", "lib/mkhost.nix", "spec: spec // { v = 2; }\n", "lib/new.nix", "{ new = 2; }\n")
	m2 := srv.publish(t, "2222222222222222", v2Files)
	gone := m2.RemotePath(manifest.File{SHA256: sum(v2Files["lib/new.nix"])})
	srv.fail[gone] = os.ErrNotExist
	_, err := s.Stage(ctx, m2, srv, m1.Version)
	if err == nil || !strings.Contains(err.Error(), gone+" (lib/new.nix)") {
		t.Fatalf("v2 stage: %v, want a failure naming %s", err, gone)
	}
	for _, c := range []string{v2Files["flake.nix"], v2Files["lib/mkhost.nix"]} {
		if _, err := os.Stat(s.objectPath(sum(c))); err != nil {
			t.Errorf("an object v2 verified was not kept: %v", err)
		}
	}

	// v3 keeps v2's flake.nix, changes lib/mkhost.nix again, and has lib/new.nix.
	v3Files := with(v2Files, "lib/mkhost.nix", "spec: spec // { v = 3; }\n")
	m3 := srv.publish(t, "3333333333333333", v3Files)
	delete(srv.fail, gone)
	before := srv.downloads()
	st, err := s.Stage(ctx, m3, srv, m1.Version)
	if err != nil {
		t.Fatal(err)
	}
	if st.Downloaded != 2 || srv.downloads()-before != 2 {
		t.Errorf("v3 stage: %+v; want 2 downloads (lib/mkhost.nix v3, lib/new.nix), v2's flake.nix kept", st)
	}
	if _, err := os.Stat(s.objectPath(sum(v2Files["lib/mkhost.nix"]))); !os.IsNotExist(err) {
		t.Errorf("v2's lib/mkhost.nix, which neither v1 nor v3 names, is still in the store: %v", err)
	}
	var want []string
	for _, c := range with(v3Files, "old-mkhost", v1Files["lib/mkhost.nix"], "old-flake", v1Files["flake.nix"]) {
		want = append(want, sum(c))
	}
	sort.Strings(want)
	want = dedupe(want)
	if got := objects(t, s); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("store after v3 = %v, want exactly the objects of v1 and v3 %v", got, want)
	}
}

func dedupe(xs []string) []string {
	var out []string
	for i, x := range xs {
		if i == 0 || xs[i-1] != x {
			out = append(out, x)
		}
	}
	return out
}

// An agent upgraded from one that kept no store takes unchanged contents
// from its old tree (verified) instead of downloading them again.
func TestOldTreeSeedsTheStore(t *testing.T) {
	srv := newChroot(t, 1)
	s := newStore(t)
	ctx := context.Background()
	m1 := srv.publish(t, "1111111111111111", v1Files)
	if _, err := s.Stage(ctx, m1, srv); err != nil {
		t.Fatal(err)
	}
	// What an older agent left: the tree, no objects, no manifest beside it.
	os.RemoveAll(s.Objects)
	os.Remove(s.manifestPath(m1.Version))
	m2 := srv.publish(t, "2222222222222222", with(v1Files, "hosts/alpha/default.nix", "{ generation = \"2\"; }\n"))
	before := srv.downloads()
	st, err := s.Stage(ctx, m2, srv, m1.Version)
	if err != nil {
		t.Fatal(err)
	}
	if st.Downloaded != 1 || st.Imported != 4 || srv.downloads()-before != 1 {
		t.Errorf("stage after an upgrade: %+v; want 1 download and 4 contents taken from the old tree", st)
	}
}

func TestCleanRemovesLeftovers(t *testing.T) {
	s := newStore(t)
	os.MkdirAll(s.Objects, 0o755)
	staging := filepath.Join(s.Dir, stagingPrefix+"9999999999999999-123")
	trash := filepath.Join(s.Dir, trashPrefix+"8888888888888888-1", "8888888888888888")
	tmp := filepath.Join(s.Objects, tmpPrefix+"abc-1")
	orphan := s.manifestPath("7777777777777777")
	for _, d := range []string{filepath.Join(staging, "hosts"), filepath.Join(trash, "lib")} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(staging, "flake.nix"), []byte("{"), 0o644)
	os.WriteFile(filepath.Join(trash, "lib", "x.nix"), []byte("{"), 0o644)
	os.WriteFile(tmp, []byte("half"), 0o644)
	os.WriteFile(orphan, []byte("{}"), 0o644)
	if err := s.Clean(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{staging, filepath.Dir(trash), tmp, orphan} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived Clean", p)
		}
	}
	if vs, _ := s.Versions(); len(vs) != 0 {
		t.Errorf("leftovers counted as trees: %v", vs)
	}
}

func TestEmptyRemovesEverything(t *testing.T) {
	srv := newChroot(t, 2)
	s := newStore(t)
	m := srv.publish(t, "1111111111111111", v1Files)
	if _, err := s.Stage(context.Background(), m, srv); err != nil {
		t.Fatal(err)
	}
	s.SetCurrent(m.Version)
	if err := s.Empty(); err != nil {
		t.Fatal(err)
	}
	if vs, _ := s.Versions(); len(vs) != 0 || len(objects(t, s)) != 0 {
		t.Errorf("after Empty: trees %v, objects %v", vs, objects(t, s))
	}
	if entries, _ := os.ReadDir(s.Dir); len(entries) != 0 {
		t.Errorf("after Empty %s holds %v", s.Dir, entries)
	}
}

func TestCopyIsPrivateAndWritable(t *testing.T) {
	srv := newChroot(t, 2)
	s := newStore(t)
	m := srv.publish(t, "1111111111111111", v1Files)
	if _, err := s.Stage(context.Background(), m, srv); err != nil {
		t.Fatal(err)
	}
	dir, err := s.Copy("1111111111111111")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "flake.lock"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := readTree(t, s.Path("1111111111111111")); fmt.Sprint(got) != fmt.Sprint(v1Files) {
		t.Errorf("writing the copy changed the held version: %v", got)
	}
	if err := s.Verify(m); err != nil {
		t.Errorf("the held version no longer verifies: %v", err)
	}
	if err := s.Clean(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Error("Clean kept a self-update copy")
	}
}
