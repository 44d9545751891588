// Package layers holds the rule of bento's import graph, as data: a
// package may import packages of its own layer or of a lower one, never
// one above. Its test checks every package of the module against it.
package layers

import (
	"fmt"
	"sort"
	"strings"
)

// Layers lists the module's packages from the top (0) down, by path
// relative to the module; "x/..." stands for x and everything below it.
// A package is in the layer of its longest matching entry. A new package
// must be placed here: the test refuses packages the table does not name.
var Layers = [][]string{
	// Programs and test harnesses: nothing imports them but tests.
	{"cmd/...", "bench/...", "examples/...", "nixtest/...", "templates/...",
		"internal/e2e/...", "internal/fixture/...", "internal/format1/...",
		"internal/sshdtest/...", "internal/benchtb/...", "internal/ci/...", "internal/layers/..."},
	// The pipelines: a deploy, a host's agent, the fleet's status, the
	// dashboard, mirrors, and a rollout (which drives deploy in waves).
	{"deploy/...", "agent/...", "status/...", "serve/...", "mirror/...", "bundle/...", "rollout/..."},
	// The steps.
	{"builder/...", "publish/...", "activate/...", "cache/...", "sftpcache/...", "secrets/...", "history/..."},
	{"eval/..."},
	// Shared vocabulary and mechanisms.
	{"nix/...", "fleet/...", "manifest/...", "internal/..."},
}

// Layer returns the layer of pkg (relative to the module) and whether the
// table places it.
func Layer(pkg string) (int, bool) {
	best, layer := -1, 0
	for i, entries := range Layers {
		for _, e := range entries {
			base, tree := strings.CutSuffix(e, "/...")
			if pkg == base || tree && strings.HasPrefix(pkg, base+"/") {
				if len(base) > best {
					best, layer = len(base), i
				}
			}
		}
	}
	return layer, best >= 0
}

// Check returns one line for every import in graph (package → the module
// packages it imports, outside its tests) that goes up a layer, and for
// every package the table does not place.
func Check(graph map[string][]string) []string {
	var bad []string
	for pkg, imports := range graph {
		from, ok := Layer(pkg)
		if !ok {
			bad = append(bad, fmt.Sprintf("%s is in no layer: add it to layers.Layers", pkg))
			continue
		}
		for _, imp := range imports {
			to, ok := Layer(imp)
			if ok && to < from {
				bad = append(bad, fmt.Sprintf("%s (layer %d) imports %s (layer %d, above it)", pkg, from, imp, to))
			}
		}
	}
	sort.Strings(bad)
	return bad
}
