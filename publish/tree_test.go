package publish_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
)

// nixView returns what Nix copies of the flake at ref: path → mode and
// hash, symlinks followed (bento ships them dereferenced).
func nixView(t *testing.T, dir, ref string) map[string]string {
	t.Helper()
	var meta struct{ Path string }
	if err := json.Unmarshal([]byte(run(t, dir, "nix", "flake", "metadata", "--json", ref)), &meta); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var walk func(p, rel string)
	walk = func(p, rel string) {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.IsDir() {
			data, _ := os.ReadFile(p)
			out[rel] = mode(fi.Mode()) + " " + sha(data)
			return
		}
		entries, _ := os.ReadDir(p)
		for _, e := range entries {
			r := e.Name()
			if rel != "" {
				r = rel + "/" + e.Name()
			}
			walk(filepath.Join(p, e.Name()), r)
		}
	}
	walk(meta.Path, "")
	return out
}

func mode(m os.FileMode) string {
	if m&0o111 != 0 {
		return "exec"
	}
	return "file"
}

func treeView(tr *publish.Tree) map[string]string {
	out := map[string]string{}
	for _, f := range tr.Files {
		m := "file"
		if f.Mode == publish.ModeExec {
			m = "exec"
		}
		out[f.Path] = m + " " + f.SHA256
	}
	return out
}

// The published tree is exactly the source Nix evaluates: for a git flake
// the index (staged files included, untracked and deleted ones not) read
// from the work tree; for a path: flake every file. Links are followed,
// secrets/ and nix build's result links never ship.
func TestTreeIsWhatNixSees(t *testing.T) {
	for _, tc := range []struct {
		name string
		git  bool
	}{{"git", true}, {"path", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newFleet(t, map[string]string{
				"shared/x.nix":    "{ x = 1; }\n",
				"gone.nix":        "{ }\n",
				"secrets/key":     "s3cret\n",
				".gitignore":      "result\n",
				"nested/a/b/c.md": "deep\n",
			}, tc.git)
			writeFile(t, filepath.Join(dir, "lib/run.sh"), "#!/bin/sh\necho hi\n", 0o755)
			symlink(t, "shared", filepath.Join(dir, "modules"))
			symlink(t, "../shared/x.nix", filepath.Join(dir, "lib/alias.nix"))
			ref := "path:" + dir
			if tc.git {
				run(t, dir, "git", "add", "lib/run.sh", "modules", "lib/alias.nix")
				run(t, dir, "git", "commit", "-qm", "more")
				ref = dir
			}
			// Work-tree changes Nix sees (staged, modified) or not (untracked, deleted).
			writeFile(t, filepath.Join(dir, "staged.nix"), "{ staged = true; }\n", 0o644)
			if tc.git {
				run(t, dir, "git", "add", "staged.nix")
			}
			writeFile(t, filepath.Join(dir, "hosts/alpha/default.nix"), "# edited\n"+mustRead(t, filepath.Join(dir, "hosts/alpha/default.nix")), 0o644)
			os.Remove(filepath.Join(dir, "gone.nix"))
			writeFile(t, filepath.Join(dir, "notes.txt"), "scratch\n", 0o644)
			symlink(t, firstStorePath(t), filepath.Join(dir, "result"))

			h := flakeHost("alpha", dir)
			h.Ref = ref
			src, err := publish.SourceFor(h, dir)
			if err != nil {
				t.Fatal(err)
			}
			tr, err := publish.ReadTree(context.Background(), src, publish.TreeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			want := nixView(t, dir, ref)
			for p := range want {
				if strings.HasPrefix(p, "secrets/") || p == "result" || strings.HasPrefix(p, "result/") {
					delete(want, p)
				}
			}
			if got := treeView(tr); !reflect.DeepEqual(got, want) {
				t.Errorf("published tree differs from what Nix copies:\n got %v\nwant %v", keys(got), keys(want))
			}
			notes := strings.Join(tr.Notes, "\n")
			if !strings.Contains(notes, "secrets/") {
				t.Errorf("no note about secrets/: %q", notes)
			}
			if tc.git && !strings.Contains(notes, "untracked") || tc.git && !strings.Contains(notes, "notes.txt") {
				t.Errorf("no note naming the untracked file: %q", notes)
			}
			if !tc.git && !strings.Contains(notes, "result") {
				t.Errorf("no note about the result link: %q", notes)
			}
		})
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func firstStorePath(t *testing.T) string {
	entries, err := os.ReadDir("/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			return "/nix/store/" + e.Name()
		}
	}
	t.Skip("empty /nix/store")
	return ""
}

func keys(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v[:10])
	}
	sort.Strings(out)
	return out
}

var timeZero = time.Unix(0, 0)

func byteFile(content string) manifest.File {
	return manifest.File{Path: "k", Mode: publish.ModeFile, Size: int64(len(content)), SHA256: sha([]byte(content))}
}

func TestTreeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		git   bool
		want  []string
	}{
		{"link escaping by ..", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "../outside.nix"), "{ }", 0o644)
			symlink(t, "../../outside.nix", filepath.Join(dir, "lib/evil.nix"))
		}, false, []string{"symlink lib/evil.nix -> ../../outside.nix escapes the tree"}},
		{"absolute link", func(t *testing.T, dir string) {
			symlink(t, "/etc/passwd", filepath.Join(dir, "passwd"))
		}, false, []string{"symlink passwd -> /etc/passwd escapes the tree"}},
		{"directory replaced by a link outside", func(t *testing.T, dir string) {
			os.MkdirAll(filepath.Join(dir, "../elsewhere"), 0o755)
			writeFile(t, filepath.Join(dir, "../elsewhere/x.nix"), "{ }", 0o644)
			writeFile(t, filepath.Join(dir, "mods/x.nix"), "{ }", 0o644)
			run(t, dir, "git", "add", "mods/x.nix")
			os.RemoveAll(filepath.Join(dir, "mods"))
			symlink(t, "../elsewhere", filepath.Join(dir, "mods"))
		}, true, []string{"mods/x.nix (through a symlinked directory) escapes the tree"}},
		{"link loop", func(t *testing.T, dir string) {
			symlink(t, "b.nix", filepath.Join(dir, "a.nix"))
			symlink(t, "a.nix", filepath.Join(dir, "b.nix"))
		}, false, []string{"a.nix", "loop"}},
		{"directory loop", func(t *testing.T, dir string) {
			symlink(t, "..", filepath.Join(dir, "lib/up"))
		}, false, []string{"symlink lib/up makes a loop"}},
		{"dangling link", func(t *testing.T, dir string) {
			symlink(t, "nothing.nix", filepath.Join(dir, "lib/dangling.nix"))
		}, false, []string{"symlink lib/dangling.nix -> nothing.nix points to nothing"}},
		{"fifo", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, false, []string{"pipe is a", "not a file, directory or symlink"}},
		{"tracked link to an untracked file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "local.nix"), "{ }", 0o644)
			symlink(t, "local.nix", filepath.Join(dir, "alias.nix"))
			run(t, dir, "git", "add", "alias.nix")
		}, true, []string{"symlink alias.nix points to", "git does not track"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newFleet(t, nil, tc.git)
			tc.setup(t, dir)
			src := publish.Source{Root: dir, Boundary: dir, Plain: !tc.git}
			_, err := publish.ReadTree(context.Background(), src, publish.TreeOptions{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// The version depends on paths, contents and the executable bit, nothing else.
func TestVersion(t *testing.T) {
	base := func(t *testing.T) string {
		dir := t.TempDir()
		writeFile(t, filepath.Join(dir, "flake.nix"), "{ }\n", 0o644)
		writeFile(t, filepath.Join(dir, "lib/a.nix"), "a\n", 0o644)
		return dir
	}
	version := func(t *testing.T, dir string) string {
		tr, err := publish.ReadTree(context.Background(), publish.Source{Root: dir, Plain: true}, publish.TreeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return publish.Version(tr.Manifest(), nil)
	}
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir string)
		same   bool
	}{
		{"touch", func(t *testing.T, dir string) {
			os.Chtimes(filepath.Join(dir, "lib/a.nix"), timeZero, timeZero)
		}, true},
		{"group-writable", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "lib/a.nix"), 0o664) }, true},
		{"rewrite same content", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "lib/a.nix"), "a\n", 0o600) }, true},
		{"content", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "lib/a.nix"), "b\n", 0o644) }, false},
		{"executable", func(t *testing.T, dir string) { os.Chmod(filepath.Join(dir, "lib/a.nix"), 0o755) }, false},
		{"rename", func(t *testing.T, dir string) {
			os.Rename(filepath.Join(dir, "lib/a.nix"), filepath.Join(dir, "lib/b.nix"))
		}, false},
		{"new empty file", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "empty"), "", 0o644) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := base(t)
			before := version(t, dir)
			tc.change(t, dir)
			after := version(t, dir)
			if (before == after) != tc.same {
				t.Errorf("version %s -> %s; want same=%v", before, after, tc.same)
			}
			if len(after) != publish.VersionLen {
				t.Errorf("version %q is not %d hex digits", after, publish.VersionLen)
			}
		})
	}
	if publish.Version(nil, nil) == publish.Version(nil, []manifest.File{byteFile("k")}) {
		t.Error("extra files do not change the version")
	}
}
