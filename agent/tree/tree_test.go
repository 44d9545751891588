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
	"sync/atomic"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// chroot is a server-side chroot on the local disk: publish writes
// config/<version>/…, Download reads it as the SFTP server would.
type chroot struct {
	root      string
	downloads atomic.Int64
	failAfter int64 // fail downloads after this many (0: never)
}

func (c *chroot) Download(ctx context.Context, remote string, w io.Writer, max int64) (int64, error) {
	if n := c.downloads.Add(1); c.failAfter > 0 && n > c.failAfter {
		return 0, errors.New("connection lost")
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
	return n, err
}

func (c *chroot) publish(t *testing.T, version string, files map[string]string) *manifest.Manifest {
	t.Helper()
	m := &manifest.Manifest{Format: manifest.Format, Host: "alpha", Version: version}
	var paths []string
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(c.root, manifest.ConfigPath(version), p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := uint32(0o644)
		if strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(files[p]), os.FileMode(mode)); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(files[p]))
		m.Files = append(m.Files, manifest.File{Path: p, Mode: mode, Size: int64(len(files[p])), SHA256: hex.EncodeToString(sum[:])})
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	return m
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

func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

var v1Files = map[string]string{
	"flake.nix":               "{ outputs = _: { }; }\n",
	"hosts/alpha/default.nix": "{ generation = \"1\"; }\n",
	"lib/mkhost.nix":          "spec: spec\n",
	"bin/hook.sh":             "#!/bin/sh\necho hi\n",
}

func TestStageDownloadsVerifiesAndReuses(t *testing.T) {
	srv := &chroot{root: t.TempDir()}
	s := &Store{Dir: filepath.Join(t.TempDir(), "config")}
	ctx := context.Background()

	m1 := srv.publish(t, "1111111111111111", v1Files)
	st, err := s.Stage(ctx, m1, srv)
	if err != nil {
		t.Fatal(err)
	}
	if st.Downloaded != 4 || st.Reused != 0 || st.Bytes == 0 {
		t.Errorf("first stage: %+v, want 4 downloaded, 0 reused", st)
	}
	if got := readTree(t, s.Path("1111111111111111")); fmt.Sprint(got) != fmt.Sprint(v1Files) {
		t.Errorf("tree v1 = %v, want %v", got, v1Files)
	}
	fi, err := os.Stat(filepath.Join(s.Path("1111111111111111"), "bin/hook.sh"))
	if err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("bin/hook.sh should be executable: %v %v", fi.Mode(), err)
	}
	if err := s.SetCurrent("1111111111111111"); err != nil {
		t.Fatal(err)
	}

	// v2 changes one file: only that one crosses the network.
	v2Files := map[string]string{}
	for k, v := range v1Files {
		v2Files[k] = v
	}
	v2Files["hosts/alpha/default.nix"] = "{ generation = \"2\"; }\n"
	m2 := srv.publish(t, "2222222222222222", v2Files)
	before := srv.downloads.Load()
	st, err = s.Stage(ctx, m2, srv, "1111111111111111")
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.downloads.Load() - before; got != 1 || st.Downloaded != 1 || st.Reused != 3 {
		t.Errorf("second stage downloaded %d files (stats %+v), want only the changed one", got, st)
	}
	if got := readTree(t, s.Path("2222222222222222")); fmt.Sprint(got) != fmt.Sprint(v2Files) {
		t.Errorf("tree v2 = %v, want %v", got, v2Files)
	}

	// Staging a version already held downloads nothing.
	before = srv.downloads.Load()
	if _, err := s.Stage(ctx, m2, srv, "1111111111111111"); err != nil {
		t.Fatal(err)
	}
	if srv.downloads.Load() != before {
		t.Error("staging a version already held downloaded files again")
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
	if l := leftovers(t, s.Dir); len(l) != 0 {
		t.Errorf("leftovers in %s: %v", s.Dir, l)
	}
}

func TestStageRefusesBadContent(t *testing.T) {
	cases := []struct {
		name    string
		tamper  func(t *testing.T, srv *chroot, m *manifest.Manifest)
		wantErr string
	}{
		{"server file differs from its hash", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			os.WriteFile(filepath.Join(srv.root, "config/1111111111111111/lib/mkhost.nix"), []byte("spec: evil\n"), 0o644)
		}, "lib/mkhost.nix: sha256"},
		{"server file longer than listed", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			os.WriteFile(filepath.Join(srv.root, "config/1111111111111111/flake.nix"), []byte(v1Files["flake.nix"]+"# more\n"), 0o644)
		}, "flake.nix: more than the expected"},
		{"server file shorter than listed", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			os.WriteFile(filepath.Join(srv.root, "config/1111111111111111/flake.nix"), []byte("{"), 0o644)
		}, "flake.nix: size 1, but the manifest says"},
		{"file missing on the server", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			os.Remove(filepath.Join(srv.root, "config/1111111111111111/flake.nix"))
		}, "config/1111111111111111/flake.nix"},
		{"path escaping the tree", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			m.Files[0].Path = "../../etc/passwd"
		}, `unsafe path "../../etc/passwd"`},
		{"absolute path", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			m.Files[0].Path = "/etc/passwd"
		}, `unsafe path "/etc/passwd"`},
		{"connection lost half way", func(t *testing.T, srv *chroot, m *manifest.Manifest) {
			srv.failAfter = 2
		}, "connection lost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := &chroot{root: t.TempDir()}
			s := &Store{Dir: filepath.Join(t.TempDir(), "config"), Jobs: 1}
			m := srv.publish(t, "1111111111111111", v1Files)
			tc.tamper(t, srv, m)
			_, err := s.Stage(context.Background(), m, srv)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Stage error = %v, want one containing %q", err, tc.wantErr)
			}
			if s.Has("1111111111111111") {
				t.Error("a refused version was put in place")
			}
			if l := leftovers(t, s.Dir); len(l) != 0 {
				t.Errorf("staging left behind: %v", l)
			}
			if _, err := os.Stat("/etc/passwd.bento-test"); err == nil {
				t.Error("wrote outside the tree")
			}
		})
	}
}

func TestTamperedLocalCopyIsNotReused(t *testing.T) {
	srv := &chroot{root: t.TempDir()}
	s := &Store{Dir: filepath.Join(t.TempDir(), "config")}
	ctx := context.Background()
	m1 := srv.publish(t, "1111111111111111", v1Files)
	if _, err := s.Stage(ctx, m1, srv); err != nil {
		t.Fatal(err)
	}
	// Same size, different content: only the hash tells.
	p := filepath.Join(s.Path("1111111111111111"), "lib/mkhost.nix")
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, []byte("spec: EVIL\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m2 := srv.publish(t, "2222222222222222", v1Files)
	st, err := s.Stage(ctx, m2, srv, "1111111111111111")
	if err != nil {
		t.Fatal(err)
	}
	if st.Downloaded != 1 {
		t.Errorf("downloaded %d files, want 1 (the tampered one)", st.Downloaded)
	}
	if got := readTree(t, s.Path("2222222222222222"))["lib/mkhost.nix"]; got != v1Files["lib/mkhost.nix"] {
		t.Errorf("v2 lib/mkhost.nix = %q, want the published content", got)
	}
}

func TestCleanRemovesInterruptedStaging(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	half := filepath.Join(s.Dir, stagingPrefix+"v9-123")
	os.MkdirAll(filepath.Join(half, "hosts"), 0o755)
	os.WriteFile(filepath.Join(half, "flake.nix"), []byte("{"), 0o644)
	if err := s.Clean(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(half); !os.IsNotExist(err) {
		t.Errorf("interrupted staging %s survived Clean", half)
	}
	if s.Has("9999999999999999") {
		t.Error("half tree counted as held")
	}
}

func TestCopyIsPrivateAndWritable(t *testing.T) {
	srv := &chroot{root: t.TempDir()}
	s := &Store{Dir: t.TempDir()}
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
	if err := s.Clean(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Error("Clean kept a self-update copy")
	}
}
