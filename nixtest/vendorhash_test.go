package nixtest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var vendorHashRE = regexp.MustCompile(`(?m)^\s*vendorHash = "(sha256-[A-Za-z0-9+/=]+)";`)

// goSources lists the files the package's source file set holds: go.mod,
// go.sum and every .go file (see nix/package.nix), relative to the root,
// skipping what the go command skips (.git, _*, .*, testdata, vendor).
// In a git checkout these are the tracked files, as Nix sees a git flake
// (their working-tree content; untracked work in progress is left out).
func goSources(t testing.TB, root string) []string {
	t.Helper()
	files := []string{"go.mod", "go.sum"}
	if _, err := os.Stat(filepath.Join(root, ".git")); err == nil {
		if out, err := exec.Command("git", "-C", root, "ls-files", "-z", "--", "*.go").Output(); err == nil {
			for _, rel := range strings.Split(string(out), "\x00") {
				if rel == "" || skippedByGo(rel) {
					continue
				}
				if _, err := os.Stat(filepath.Join(root, rel)); err == nil {
					files = append(files, rel)
				}
			}
			return files
		}
	}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel != "." && skippedByGo(rel) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(rel, ".go") {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// skippedByGo reports whether the go command ignores a path: a directory
// (or a file inside one) named testdata or vendor, or starting with . or _.
func skippedByGo(rel string) bool {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	for i, p := range parts {
		if i == len(parts)-1 && strings.HasSuffix(p, ".go") {
			break
		}
		if strings.HasPrefix(p, ".") || strings.HasPrefix(p, "_") || p == "testdata" || p == "vendor" {
			return true
		}
	}
	return false
}

// The vendorHash in nix/package.nix is what buildGoModule will compute:
// it runs `go mod vendor` on the package's source and hashes the vendor
// directory (NAR, sha256), exactly as this test does. Any change to the Go
// dependencies (go.mod, go.sum, or a first import of a package of an
// existing module) changes it.
func TestVendorHash(t *testing.T) {
	needNix(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go is not on PATH")
	}
	root := repoRoot(t)
	pkgFile := filepath.Join(root, "nix/package.nix")
	data, err := os.ReadFile(pkgFile)
	if err != nil {
		t.Fatal(err)
	}
	m := vendorHashRE.FindAllSubmatch(data, -1)
	if len(m) != 1 {
		t.Fatalf("nix/package.nix must hold exactly one line `vendorHash = \"sha256-…\";` (found %d)", len(m))
	}
	have := string(m[0][1])

	tmp := t.TempDir()
	copyTree(t, tmp, goSources(t, root)...)
	cmd := exec.Command("go", "mod", "vendor")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	want := strings.TrimSpace(run(t, tmp, "nix", "hash", "path", "vendor"))
	if have != want {
		t.Fatalf(`nix/package.nix has vendorHash = %q, but bento's Go dependencies now hash to %q.

The Go dependencies changed (go.mod, go.sum, or a new import of an existing
module's package). Update the hash: in nix/package.nix set

    vendorHash = %q;

(This test recomputes it as buildGoModule does: "go mod vendor" on the
repository's Go files, then "nix hash path vendor".)`, have, want, want)
	}
}

// The package's source is go.mod, go.sum and the .go files. A //go:embed
// of anything else would build here and fail in Nix: the embedded files
// must then be added to the file set in nix/package.nix (and here).
func TestPackageSource(t *testing.T) {
	root := repoRoot(t)
	allowed := map[string]bool{"serve/handler.go": true} // "path/of/file.go": true once its embeds are in the file set
	for _, rel := range goSources(t, root) {
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") || allowed[rel] {
			continue
		}
		f, err := os.Open(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			if strings.HasPrefix(strings.TrimSpace(sc.Text()), "//go:embed") {
				t.Errorf("%s:%d embeds files, which nix/package.nix's source (go.mod, go.sum, *.go) lacks: add them to its file set, then to `allowed` in this test", rel, n)
			}
		}
		f.Close()
	}
	data, err := os.ReadFile(filepath.Join(root, "nix/package.nix"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`(root + "/go.mod")`, `(root + "/go.sum")`, `(lib.fileset.fileFilter (file: file.hasExt "go") root)`, `subPackages = [ "cmd/bento" ];`, `(root + "/serve/assets")`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("nix/package.nix no longer has %s", want)
		}
	}
}
