package cache

import (
	"context"
	"os"
	"path/filepath"

	"github.com/bento-nix/bento/manifest"
)

// Target is one host of a deploy.
type Target struct {
	Host string
	// Dir is the host's chroot, <root>/<host>.
	Dir string
	// Toplevel is the system just built for the host.
	Toplevel string
}

// LinkFleet is the deploy's step between building and publishing: one
// nix copy of every new system into the pool, then each host's cache
// linked to its new system and to the one its live manifest names, so a
// host that read that manifest a moment ago can still fetch it. It returns
// per-host stats and errors; a host with an error must not be published
// with a manifest that announces its cache. Call Prune(ctx, nil) once the
// manifests are published.
func (p *Pool) LinkFleet(ctx context.Context, targets []Target) (map[string]Stats, map[string]error) {
	stats := make(map[string]Stats, len(targets))
	errs := make(map[string]error)
	var tops []string
	for _, t := range targets {
		tops = append(tops, t.Toplevel)
	}
	if err := p.Add(ctx, tops); err != nil {
		for _, t := range targets {
			errs[t.Host] = err
		}
		return stats, errs
	}
	dir, _ := p.check() // Add checked it
	for _, t := range targets {
		want := []string{t.Toplevel}
		if prev := liveToplevel(t.Dir); prev != "" && prev != t.Toplevel {
			// Only when the pool holds its whole closure: after a prune, or
			// the first deploy with a cache, it may not, and the host has
			// nothing to fetch from its old manifest anyway.
			if _, err := p.closure(dir, []string{prev}, true); err == nil {
				want = append(want, prev)
			} else {
				p.log().Debug("host cache: previous system not in the pool", "host", t.Host, "path", prev, "err", err)
			}
		}
		st, err := p.LinkHost(ctx, t.Dir, want)
		if err != nil {
			errs[t.Host] = err
			continue
		}
		stats[t.Host] = st
	}
	return stats, errs
}

// liveToplevel is the expected system of the manifest published in dir,
// or "" when there is none.
func liveToplevel(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, manifest.ManifestFile))
	if err != nil {
		return ""
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return ""
	}
	return m.ExpectedToplevel
}
