package publish

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// Orphan is a chroot whose host is no longer in the fleet.
type Orphan struct {
	Host string `json:"host"`
	Path string `json:"path"`
	// ReportsOnly: an earlier prune kept its reports/ and nothing else.
	ReportsOnly bool `json:"reportsOnly,omitempty"`
}

// Orphans lists the chroots under the root whose host is not in known.
// Only directories that look like bento chroots (a manifest, config/,
// secrets/, cache/ or reports/ inside) count, so unrelated directories are never
// listed, let alone pruned.
func (p *Publisher) Orphans(known []string) ([]Orphan, error) {
	entries, err := os.ReadDir(p.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing chroots: %w", err)
	}
	in := make(map[string]bool, len(known))
	for _, k := range known {
		in[k] = true
	}
	var out []Orphan
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() || in[n] || fleet.ValidateName(n) != nil {
			continue
		}
		if o, ok := p.orphan(n); ok {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

// orphan is the directory n of the root as an orphan, when it looks like
// a bento chroot.
func (p *Publisher) orphan(n string) (Orphan, bool) {
	dir := filepath.Join(p.root, n)
	has := func(sub string) bool { _, err := os.Lstat(filepath.Join(dir, sub)); return err == nil }
	bento := has(manifest.ManifestFile) || has(manifest.ObjectsDir) || has(manifest.ConfigDir) || has(manifest.SecretsDir) || has(manifest.CacheDir)
	if !bento && !has(manifest.ReportsDir) {
		return Orphan{}, false
	}
	return Orphan{Host: n, Path: dir, ReportsOnly: !bento}, true
}

// Prune removes an orphan's publication: its manifest first (a client then
// sees that nothing is published rather than a manifest naming missing
// files), then everything else but reports/, unless withReports, which
// removes the whole chroot; then its retention record, and the pool's
// objects no other chroot links. A host that is no longer in the fleet
// gets no retention period.
func (p *Publisher) Prune(o Orphan, withReports bool) error {
	if p.opts.DryRun {
		return errors.New("prune: dry run")
	}
	if err := fleet.ValidateName(o.Host); err != nil {
		return err
	}
	dir := filepath.Join(p.root, o.Host)
	if err := os.Remove(filepath.Join(dir, manifest.ManifestFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("host %s: prune: %w", o.Host, err)
	}
	defer p.collectPool(nil)
	// A chroot left by a host named like bento's own state (before such
	// names were refused) has no retention record: that entry of StateDir
	// is the rollout record, the history database or the deploy marker.
	if CheckHostName(o.Host) == nil {
		if err := removeAll(p.stateDir(o.Host)); err != nil {
			return fmt.Errorf("host %s: prune: retention record: %w", o.Host, err)
		}
	}
	if withReports {
		return p.removeChroot(o.Host, dir)
	}
	return removeAllButReports(o.Host, dir)
}

// removeChroot removes host's whole chroot dir.
func (p *Publisher) removeChroot(host, dir string) error {
	if err := removeAll(dir); err != nil {
		return fmt.Errorf("host %s: prune: %w", host, err)
	}
	return atomicfile.SyncDir(p.root)
}

// removeAllButReports empties host's chroot dir but for its reports/.
func removeAllButReports(host, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("host %s: prune: %w", host, err)
	}
	for _, e := range entries {
		if e.Name() == manifest.ReportsDir {
			continue
		}
		if err := removeAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("host %s: prune: %w", host, err)
		}
	}
	return atomicfile.SyncDir(dir)
}
