package publish

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
)

// markerPath is the file that says a deploy started linking objects and
// did not finish.
func (p *Publisher) markerPath() string { return filepath.Join(p.root, StateDir, "unfinished") }

// loadMarker reads what an unfinished deploy left to scan.
func (p *Publisher) loadMarker() {
	p.pending, p.leftover, p.inflight = map[string]bool{}, map[string]bool{}, map[string]bool{}
	data, err := readCapped(p.markerPath(), 16<<20)
	if err != nil {
		p.poolScan = !errors.Is(err, fs.ErrNotExist)
		return
	}
	p.poolScan = true
	for _, l := range strings.Split(string(data), "\n") {
		if fleet.ValidateName(l) == nil {
			p.pending[l] = true
			p.leftover[l] = true
		}
	}
}

// mark makes the marker name hosts (on top of what it names already),
// before anything a kill could leave unnamed is written for them.
func (p *Publisher) mark(hosts []string) error {
	p.markMu.Lock()
	defer p.markMu.Unlock()
	grew := !p.marked
	for _, h := range hosts {
		if !p.inflight[h] {
			p.inflight[h], grew = true, true
		}
	}
	if !grew {
		return nil
	}
	if err := p.writeMarker(true); err != nil {
		return err
	}
	p.marked = true
	return nil
}

// writeMarker writes the hosts left to scan, and those this deploy is
// writing when inflight.
func (p *Publisher) writeMarker(inflight bool) error {
	if err := p.ensurePrivateDir(filepath.Join(p.root, StateDir)); err != nil {
		return fmt.Errorf("retention record: %w", err)
	}
	var names []string
	for h := range p.leftover {
		names = append(names, h)
	}
	for h := range p.inflight {
		if inflight && !p.leftover[h] {
			names = append(names, h)
		}
	}
	sort.Strings(names)
	text := "# a bento deploy wrote objects and did not finish; the next deploy of these hosts scans their chroots\n" + strings.Join(names, "\n") + "\n"
	if err := atomicfile.WriteFile(p.markerPath(), []byte(text), 0o600); err != nil {
		return fmt.Errorf("retention record: %w", err)
	}
	return nil
}

// scanned says a host's chroot holds nothing unnamed any more.
func (p *Publisher) scanned(host string) {
	p.markMu.Lock()
	delete(p.leftover, host)
	p.markMu.Unlock()
}

// keepPending keeps a host in the marker for the next deploy.
func (p *Publisher) keepPending(host string) {
	p.markMu.Lock()
	p.leftover[host] = true
	p.markMu.Unlock()
}

// settleMarker removes the marker when nothing is left to scan, or
// rewrites it with what is.
func (p *Publisher) settleMarker() error {
	p.markMu.Lock()
	defer p.markMu.Unlock()
	if !p.marked && !p.poolScan {
		return nil // nothing was written, nothing was pending
	}
	if len(p.leftover) == 0 && !p.poolFailed.Load() {
		if err := os.Remove(p.markerPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("retention record: %w", err)
		}
		return nil
	}
	return p.writeMarker(false)
}

func (p *Publisher) noteRemoved(sum string) {
	p.removedMu.Lock()
	p.removed[sum] = true
	p.removedMu.Unlock()
}
