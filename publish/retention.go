package publish

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// finish updates the host's retention record and removes what left the
// window. It returns whether anything was removed or published.
func (p *Publisher) finish(j *hostJob) bool {
	now, ret := p.opts.Now(), p.opts.Retention
	h := j.hist
	if h == nil {
		return false
	}
	published := j.published()
	if published {
		p.recordLive(j, now)
	}
	expiring := h.expiring(now, ret)
	pending := p.pending[j.name]
	// full: objects/ may hold what nothing names (a deploy that did not
	// finish, a repaired record), so a prune scans it whole.
	full := pending || j.histChanged
	if !published && !expiring && !full {
		return false // unchanged: nothing written
	}
	// The record names the new manifest before anything is removed: a
	// crash from here on leaves a record that protects it.
	if err := p.saveHistory(h); err != nil {
		j.note("retention record: %v; nothing removed this time", err)
		return published
	}
	p.opts.Hook(StepRecorded, j.name)
	if !p.mayPrune(j, now, expiring, pending) {
		return published
	}
	return p.prune(j, now, full) || published
}

// published tells whether the job made its manifest live (a new version,
// or the same one with a new manifest).
func (j *hostJob) published() bool {
	return j.res.Status == StatusPublished || j.res.Status == StatusUpdated
}

// mayPrune tells whether finish removes anything once the record is
// saved: never while a recovered entry is in the window, and only when
// something may have left it.
func (p *Publisher) mayPrune(j *hostJob, now time.Time, expiring, pending bool) bool {
	if j.hist.recovering(now, p.opts.Retention) {
		return false
	}
	return j.res.Status == StatusPublished || expiring || pending
}

// prune removes what no manifest of the retention window names (objects
// scanned whole when full), then drops the expired entries from the
// record. It returns false when it could not tell what the window needs
// and removed nothing.
func (p *Publisher) prune(j *hostJob, now time.Time, full bool) bool {
	h, ret := j.hist, p.opts.Retention
	expired := expiredVersions(h, now, ret)
	keep, versions, format1, err := p.protected(j)
	if err != nil {
		j.note("retention: %v; nothing removed this time", err)
		return false
	}
	p.removeObjectsOutside(j, now, keep, full)
	p.removeOldFiles(j, versions, format1)
	p.opts.Hook(StepRemoved, j.name)
	if h.expire(now, ret) {
		p.cleanCopies(h)
		if err := p.saveHistory(h); err != nil {
			j.note("retention record: %v", err)
		}
	}
	j.res.Pruned = expired
	return true
}

// note adds a note to the job's result.
func (j *hostJob) note(format string, args ...any) {
	j.res.Notes = append(j.res.Notes, fmt.Sprintf(format, args...))
}

// recordLive makes the record name the job's new manifest, and remember
// its head with the file's identity (readLive's shortcut next time).
func (p *Publisher) recordLive(j *hostJob, now time.Time) {
	h := j.hist
	h.record(j.m, now)
	h.Live = nil
	if fi, err := os.Lstat(filepath.Join(j.hostDir, manifest.ManifestFile)); err == nil {
		head := *j.m
		head.Files = nil
		h.Live = &liveHead{ID: fileID(fi), Objects: hasObjects(j.m), Head: head}
	}
}

// expiredVersions are the versions of the record's entries that left
// the window (recovered entries aside), sorted.
func expiredVersions(h *history, now time.Time, ret time.Duration) []string {
	var expired []string
	for _, e := range h.Entries {
		if !e.inWindow(now, ret) && !e.Recovered {
			expired = append(expired, e.Version)
		}
	}
	sort.Strings(expired)
	return expired
}

// removeObjectsOutside removes the chroot's objects that keep does not
// name. Usually only what the expiring entries named can go, and only
// that is looked at; objects/ is scanned whole (full) when something
// unknown may be there: a deploy that did not finish, a repaired record,
// or a recovered entry leaving the window.
func (p *Publisher) removeObjectsOutside(j *hostJob, now time.Time, keep map[string]bool, full bool) {
	var candidates map[string]bool
	if !full {
		candidates, full = p.expiringObjects(j, now, keep)
	}
	var n int
	var err error
	if full {
		n, err = removeObjects(j.hostDir, keep, p.noteRemoved)
	} else {
		n, err = removeNamed(j.hostDir, candidates, p.noteRemoved)
	}
	j.res.Removed = n
	switch {
	case err != nil:
		p.keepPending(j.name)
		j.note("removing old objects: %v", err)
	case full:
		p.scanned(j.name)
	}
}

// expiringObjects are the objects the entries outside the window named
// and keep does not; full when they cannot be known (a recovered entry,
// an unreadable copy) and objects/ must be scanned whole.
func (p *Publisher) expiringObjects(j *hostJob, now time.Time, keep map[string]bool) (candidates map[string]bool, full bool) {
	ret := p.opts.Retention
	candidates = map[string]bool{}
	for _, e := range j.hist.Entries {
		if e.inWindow(now, ret) || !e.Recovered && !e.Objects {
			continue
		}
		if e.Recovered {
			return candidates, true
		}
		sums, err := p.copyObjects(j.name, e)
		if err != nil {
			return candidates, true
		}
		for s := range sums {
			if !keep[s] {
				candidates[s] = true
			}
		}
	}
	return candidates, false
}

// removeOldFiles removes the secrets of the versions outside the window,
// and the format-1 config/ once no manifest of the window is format 1.
func (p *Publisher) removeOldFiles(j *hostJob, versions map[string]bool, format1 bool) {
	if err := p.removeOldSecrets(j, versions); err != nil {
		j.note("removing old secrets: %v", err)
	}
	if !format1 {
		if err := p.removeAside(j.name, filepath.Join(j.hostDir, manifest.ConfigDir)); err != nil {
			j.note("removing the format-1 config/: %v", err)
		}
	}
}

// protected lists what the entries of the window need: objects (by
// sha256), versions (their secrets), and
// whether a format-1 manifest is among them (config/ stays).
func (p *Publisher) protected(j *hostJob) (keep, versions map[string]bool, format1 bool, err error) {
	now, ret := p.opts.Now(), p.opts.Retention
	keep, versions = map[string]bool{}, map[string]bool{}
	for _, e := range j.hist.Entries {
		if !e.inWindow(now, ret) {
			continue
		}
		versions[e.Version] = true
		if e.Format == 1 {
			format1 = true
		}
		if !e.Objects {
			continue
		}
		var sums map[string]bool
		if e.same(j.m) {
			sums = sumsOf(j.m) // same version and format: same files
		} else if sums, err = p.copyObjects(j.name, e); err != nil {
			return nil, nil, false, err
		}
		for s := range sums {
			keep[s] = true
		}
	}
	return keep, versions, format1, nil
}

func sumsOf(m *manifest.Manifest) map[string]bool {
	out := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		out[f.SHA256] = true
	}
	return out
}

// copyObjects reads the objects an entry's manifest copy names, once per
// version and deploy (every host of a flake shares its versions).
func (p *Publisher) copyObjects(host string, e histEntry) (map[string]bool, error) {
	p.copiesMu.Lock()
	s, ok := p.copies[e.Version]
	p.copiesMu.Unlock()
	if ok {
		return s, nil
	}
	path := filepath.Join(p.stateDir(host), e.copyName())
	data, err := readCapped(path, manifest.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("the copy of version %s: %w", e.Version, err)
	}
	m, err := manifest.Parse(data)
	if err != nil || m.Version != e.Version {
		return nil, fmt.Errorf("the copy of version %s (%s) is unreadable: %v", e.Version, path, err)
	}
	s = sumsOf(m)
	p.copiesMu.Lock()
	p.copies[e.Version] = s
	p.copiesMu.Unlock()
	return s, nil
}

// cleanCopies removes the manifest copies no entry names any more, and
// the temporary files a killed deploy left.
func (p *Publisher) cleanCopies(h *history) {
	dir := p.stateDir(h.Host)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	named := map[string]bool{historyFile: true}
	for _, e := range h.Entries {
		if e.Objects {
			named[e.copyName()] = true
		}
	}
	for _, e := range entries {
		if !named[e.Name()] && !strings.Contains(e.Name(), ".corrupt-") {
			removeAll(filepath.Join(dir, e.Name()))
		}
	}
}

// removeOldSecrets removes secrets/<version> of every version outside the
// window (and temporary directories a killed deploy left), each renamed
// aside first so that no half-removed directory keeps a version's name.
func (p *Publisher) removeOldSecrets(j *hostJob, versions map[string]bool) error {
	base := filepath.Join(j.hostDir, manifest.SecretsDir)
	entries, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if versions[n] || !(isVersionName(n) || strings.HasPrefix(n, ".tmp-")) {
			continue
		}
		if err := p.removeAside(j.name, filepath.Join(base, n)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeAside renames path into the host's state directory (outside the
// chroot), then deletes it there: a kill halfway leaves no partial tree
// under a name anyone reads. A missing path is fine.
func (p *Publisher) removeAside(host, path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	dir := p.stateDir(host)
	if err := p.ensurePrivateDir(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := p.ensurePrivateDir(dir); err != nil {
		return err
	}
	aside := filepath.Join(dir, ".tmp-removing-"+randomSuffix())
	if err := os.Rename(path, aside); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return err
		}
		aside = filepath.Join(filepath.Dir(path), ".tmp-removing-"+randomSuffix())
		if err := os.Rename(path, aside); err != nil {
			return err
		}
	}
	return removeAll(aside)
}

// removeAll is os.RemoveAll that also gets through directories a non-root
// owner made read-only (secrets directories may be 0500). Root needs no
// chmod, and must not do one: a host may swap a directory of its
// reports/ for a symlink between the walk and the chmod.
func removeAll(p string) error {
	if err := os.RemoveAll(p); err == nil || os.Geteuid() == 0 {
		return err
	}
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}

func isVersionName(n string) bool {
	if len(n) != VersionLen {
		return false
	}
	for _, c := range n {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
