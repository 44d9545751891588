package layers_test

import (
	"errors"
	"go/build"
	"io/fs"

	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/layers"
)

const module = "github.com/bento-nix/bento"

// TestModuleFollowsLayers reads the imports of every package in the
// module (production files only, as go/build selects them for this
// machine) and checks them against the table.
func TestModuleFollowsLayers(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	graph := map[string][]string{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if name := d.Name(); p != root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
			return filepath.SkipDir
		}
		pkg, err := build.ImportDir(p, 0)
		if err != nil {
			var none *build.NoGoError
			if errors.As(err, &none) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		var imports []string
		for _, imp := range pkg.Imports {
			if r, ok := strings.CutPrefix(imp, module+"/"); ok {
				imports = append(imports, r)
			}
		}
		graph[rel] = imports
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The walk must have seen the tree, not an empty directory.
	for _, want := range []string{"cmd/bento", "agent", "publish", "manifest", "internal/atomicfile"} {
		if _, ok := graph[want]; !ok {
			t.Fatalf("package %s not found under %s: the walk is broken", want, root)
		}
	}
	for _, line := range layers.Check(graph) {
		t.Error(line)
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		graph map[string][]string
		want  []string
	}{
		{"down and sideways", map[string][]string{
			"cmd/bento":      {"agent", "publish", "manifest"},
			"agent":          {"status", "agent/tree", "secrets", "internal/atomicfile"},
			"agent/tree":     {"manifest"},
			"sftpcache":      {"cache", "cache/narinfo"},
			"internal/e2e":   {"publish"},
			"eval":           {"nix", "fleet"},
			"internal/flock": nil,
		}, nil},
		{"up", map[string][]string{
			"manifest":      {"publish"},
			"publish":       {"agent/tree"},
			"cache/narinfo": {"internal/e2e"},
		}, []string{
			"cache/narinfo (layer 2) imports internal/e2e (layer 0, above it)",
			"manifest (layer 4) imports publish (layer 2, above it)",
			"publish (layer 2) imports agent/tree (layer 1, above it)",
		}},
		{"unplaced", map[string][]string{"frobnicate": nil}, []string{"frobnicate is in no layer: add it to layers.Layers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := layers.Check(tc.graph)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("Check:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}
