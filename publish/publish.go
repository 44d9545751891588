// Package publish fills the SFTP chroots that hosts pull from: for each host
// it computes the tree that ships (what Nix sees of the fleet), names it by
// a content hash, writes a new version directory beside the live one (hard
// links for unchanged files), then swaps manifest.json by rename. A client
// reading at any moment sees either the old or the new manifest, and every
// file the manifest it read names is present with the right hash.
//
// Layout (see manifest for the names):
//
//	<root>/.bento-deploy.lock       flock: one deploy at a time
//	<root>/<host>/                  root:root 0755 (sshd's ChrootDirectory rule)
//	  manifest.json                 replaced atomically
//	  config/<version>/…            the tree, files 0444/0555, kept: current + previous
//	  secrets/<version>/…           reserved for secrets (Target.Extra)
//	  reports/                      owned by the host's SFTP user, never touched
package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// Options configure a Publisher.
type Options struct {
	// Root is the chroot root, e.g. /home/chroot.
	Root string
	// Users looks up each host's SFTP user (services.bento.user), fails the
	// host when it does not exist, and makes it the owner of reports/.
	// Needs root. Off, everything belongs to whoever runs the deploy.
	Users bool
	// DryRun computes what would change and writes nothing (no lock either).
	DryRun bool
	// LockWait is how long to wait for another deploy's lock; 0 fails at once.
	LockWait time.Duration
	// Jobs is how many hosts are published at once; 2×NumCPU when 0.
	Jobs int
	// Now gives the publication time; time.Now when nil.
	Now func() time.Time
	// Logger receives debug lines; nil discards.
	Logger *slog.Logger
}

// Target is one host to publish.
type Target struct {
	Host   fleet.Host
	Source Source
	// ExpectedToplevel is the system the server built; "" when unknown
	// (--no-build, or a forced publication of a failed build).
	ExpectedToplevel string
	// Extra, when set, publishes more files beside the tree.
	Extra *Extra
	// Cache, when set, is announced in the manifest: the host's binary
	// cache in its chroot, filled by package cache.
	Cache *manifest.Cache
}

// Extra is a second set of files published with a version, under
// <host>/<Dir>/<version>/: reserved for secrets. Its files count in the
// version, and are listed in the manifest's secrets.
type Extra struct {
	Files []manifest.File
	// Write fills dir (a fresh, empty directory) with Files. It is called
	// only when the version is new, before the manifest names it.
	Write func(ctx context.Context, dir string) error
}

// Status is what happened to a host.
type Status string

const (
	// StatusUnchanged: same content, nothing written.
	StatusUnchanged Status = "unchanged"
	// StatusPublished: a new version is live.
	StatusPublished Status = "published"
	// StatusUpdated: same version; only the manifest changed (the expected
	// system, e.g. after a forced publication is built).
	StatusUpdated Status = "updated"
	// StatusFailed: nothing changed for the host; Err says why.
	StatusFailed Status = "failed"
)

// Result is the outcome for one host.
type Result struct {
	Host   string `json:"host"`
	Status Status `json:"status"`
	// DryRun: Status is what would happen; nothing was written.
	DryRun           bool   `json:"dryRun,omitempty"`
	Version          string `json:"version,omitempty"`
	Previous         string `json:"previousVersion,omitempty"`
	ExpectedToplevel string `json:"expectedToplevel,omitempty"`
	Files            int    `json:"files"`
	// Copied files were written anew; Linked ones are hard links to the
	// previous version.
	Copied int `json:"copied"`
	Linked int `json:"linked"`
	// BytesWritten counts file contents and the manifest.
	BytesWritten int64         `json:"bytesWritten"`
	Pruned       []string      `json:"pruned,omitempty"`
	Notes        []string      `json:"notes,omitempty"`
	Err          error         `json:"-"`
	Duration     time.Duration `json:"-"`
}

// OK reports whether the host is published (changed or not).
func (r Result) OK() bool { return r.Status != StatusFailed }

// Publisher writes into one chroot root. It holds the root's lock from Open
// to Close (except in dry-run mode).
type Publisher struct {
	opts     Options
	root     string
	lock     *Lock
	warnings []string
	asRoot   bool
	hashes   *HashCache
	mu       sync.Mutex
	trees    map[Source]*treeCall
}

type treeCall struct {
	done chan struct{}
	tree *Tree
	err  error
}

// Open checks the chroot root (creating it when missing) and takes its lock.
func Open(ctx context.Context, opts Options) (*Publisher, error) {
	if opts.Root == "" {
		return nil, errors.New("no chroot root: pass --chroot-root or set BENTO_CHROOT_ROOT")
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	p := &Publisher{opts: opts, root: root, asRoot: os.Geteuid() == 0, hashes: NewHashCache(), trees: map[Source]*treeCall{}}
	if p.opts.Jobs <= 0 {
		p.opts.Jobs = 2 * runtime.NumCPU()
	}
	if p.opts.Now == nil {
		p.opts.Now = time.Now
	}
	if p.opts.Logger == nil {
		p.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Users && !p.asRoot && !opts.DryRun {
		return nil, fmt.Errorf("giving each host's reports/ to its SFTP user needs root: run bento deploy as root, or pass --no-user-check for a local try-out")
	}
	if p.warnings, err = CheckRoot(root, !opts.DryRun); err != nil {
		return nil, err
	}
	if !opts.DryRun {
		if p.lock, err = AcquireLock(ctx, root, opts.LockWait); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Root is the absolute chroot root.
func (p *Publisher) Root() string { return p.root }

// Warnings are the chroot root's problems that do not stop a deploy.
func (p *Publisher) Warnings() []string { return p.warnings }

// Close releases the lock.
func (p *Publisher) Close() error { return p.lock.Release() }

// Tree reads (once per Publisher) the tree of src.
func (p *Publisher) Tree(ctx context.Context, src Source) (*Tree, error) {
	p.mu.Lock()
	c, ok := p.trees[src]
	if !ok {
		c = &treeCall{done: make(chan struct{})}
		p.trees[src] = c
	}
	p.mu.Unlock()
	if !ok {
		c.tree, c.err = ReadTree(ctx, src, TreeOptions{Exclude: []string{p.root}, Hashes: p.hashes})
		close(c.done)
	}
	select {
	case <-c.done:
		return c.tree, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Publish publishes every target, in parallel. One failing host never
// stops the others; results come in the order of targets.
func (p *Publisher) Publish(ctx context.Context, targets []Target) []Result {
	results := make([]Result, len(targets))
	var g errgroup.Group
	g.SetLimit(p.opts.Jobs)
	for i, t := range targets {
		g.Go(func() error {
			start := time.Now()
			r := p.publishHost(ctx, t)
			r.Duration = time.Since(start)
			if r.Err != nil {
				r.Status = StatusFailed
				r.Err = fmt.Errorf("host %s: publish: %w", t.Host.Name, r.Err)
			}
			results[i] = r
			return nil
		})
	}
	g.Wait()
	return results
}

func (p *Publisher) publishHost(ctx context.Context, t Target) Result {
	name := t.Host.Name
	res := Result{Host: name, DryRun: p.opts.DryRun, ExpectedToplevel: t.ExpectedToplevel}
	fail := func(err error) Result { res.Err = err; return res }
	if err := fleet.ValidateName(name); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	tree, err := p.Tree(ctx, t.Source)
	if err != nil {
		return fail(err)
	}
	res.Notes = tree.Notes
	var extra []manifest.File
	if t.Extra != nil {
		extra = t.Extra.Files
	}
	version := Version(tree.Manifest(), extra)
	res.Version, res.Files = version, len(tree.Files)

	hostDir := filepath.Join(p.root, name)
	if fi, err := os.Lstat(hostDir); err == nil && !fi.IsDir() {
		return fail(fmt.Errorf("%s is not a directory (%s); refusing to publish through it: remove it", hostDir, fi.Mode().Type()))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	var acct *account
	if p.opts.Users {
		a, err := lookupAccount(t.Host.Options.User, hostDir)
		if err != nil {
			return fail(err)
		}
		acct = &a
	}

	cur, curErr := readManifest(hostDir, name)
	if curErr != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("the current manifest is unreadable (%v): publishing afresh, no old version pruned", curErr))
	}
	if cur != nil {
		res.Previous = cur.Version
	}
	m := &manifest.Manifest{
		Format:           manifest.Format,
		Host:             name,
		Version:          version,
		ExpectedToplevel: t.ExpectedToplevel,
		Flake:            flakeOf(t.Host),
		Files:            tree.Manifest(),
		Secrets:          extra,
		Cache:            t.Cache,
	}
	live := cur != nil && cur.Version == version && p.versionPresent(hostDir, version, t.Extra != nil)
	switch {
	case live && sameMeta(cur, m):
		res.Status = StatusUnchanged
		res.Previous = ""
		res.ExpectedToplevel = cur.ExpectedToplevel
	case live:
		res.Status = StatusUpdated
	default:
		res.Status = StatusPublished
	}
	if p.opts.DryRun {
		if res.Status == StatusPublished {
			res.Copied, res.Linked, res.BytesWritten = planCopies(hostDir, cur, tree, version)
		}
		return res
	}

	if err := p.ensureLayout(hostDir, acct); err != nil {
		return fail(err)
	}
	if res.Status == StatusUnchanged {
		return res
	}
	if res.Status == StatusPublished {
		// Both directories are written completely under temporary names
		// before either is renamed into place: a failure leaves nothing.
		var stages []*staged
		defer func() {
			for _, s := range stages {
				s.discard()
			}
		}()
		if t.Extra != nil {
			s, err := p.writeExtra(ctx, hostDir, version, t.Extra)
			if err != nil {
				return fail(fmt.Errorf("secrets: %w", err))
			}
			stages = append(stages, s)
		}
		s, st, err := p.writeVersion(ctx, hostDir, version, cur, tree)
		if err != nil {
			return fail(err)
		}
		stages = append(stages, s)
		res.Copied, res.Linked, res.BytesWritten = st.copied, st.linked, st.bytes
		for i := len(stages) - 1; i >= 0; i-- {
			if err := stages[i].commit(); err != nil {
				return fail(err)
			}
		}
	}
	removeStaleTemps(hostDir)
	m.PublishedAt = p.opts.Now().UTC().Truncate(time.Millisecond)
	n, err := writeManifest(hostDir, m)
	if err != nil {
		return fail(err)
	}
	res.BytesWritten += n
	if res.Status == StatusPublished && curErr == nil {
		keep := map[string]bool{version: true}
		if cur != nil {
			keep[cur.Version] = true
		}
		pruned, err := pruneVersions(hostDir, keep)
		res.Pruned = pruned
		if err != nil {
			// The publication is live; an old directory left behind is
			// pruned by the next deploy.
			res.Notes = append(res.Notes, fmt.Sprintf("pruning old versions: %v", err))
		}
	}
	p.opts.Logger.Debug("published", "host", name, "version", version, "status", res.Status, "copied", res.Copied, "linked", res.Linked)
	return res
}

func flakeOf(h fleet.Host) manifest.Flake {
	if h.Layout == fleet.LayoutClassic {
		// The tree's root is the host's directory: the client builds its
		// configuration.nix; there is no attribute to name.
		return manifest.Flake{Layout: string(fleet.LayoutClassic)}
	}
	return manifest.Flake{Attr: fleet.ConfigAttr(h.Name), Layout: string(fleet.LayoutFlake)}
}

// sameMeta tells whether publishing m over cur (same version) would change
// nothing a client or bento status reads. An unknown expected system
// (--no-build) keeps the known one.
func sameMeta(cur, m *manifest.Manifest) bool {
	return cur.Host == m.Host && cur.Flake == m.Flake && sameCache(cur.Cache, m.Cache) &&
		(m.ExpectedToplevel == "" || m.ExpectedToplevel == cur.ExpectedToplevel)
}

func sameCache(a, b *manifest.Cache) bool {
	return a == nil && b == nil || a != nil && b != nil && *a == *b
}

func (p *Publisher) versionPresent(hostDir, version string, extra bool) bool {
	if fi, err := os.Lstat(filepath.Join(hostDir, manifest.ConfigDir, version)); err != nil || !fi.IsDir() {
		return false
	}
	if extra {
		if fi, err := os.Lstat(filepath.Join(hostDir, manifest.SecretsDir, version)); err != nil || !fi.IsDir() {
			return false
		}
	}
	return true
}

// readManifest returns the host's current manifest, nil when there is none.
func readManifest(hostDir, host string) (*manifest.Manifest, error) {
	data, err := os.ReadFile(filepath.Join(hostDir, manifest.ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, err
	}
	if m.Host != host {
		return nil, fmt.Errorf("it names host %q", m.Host)
	}
	return m, nil
}

// ensureLayout creates or repairs the host's directories, writing nothing
// when they are already right: <host> and config/ owned by root (when root)
// and 0755, reports/ owned by the host's user.
func (p *Publisher) ensureLayout(hostDir string, acct *account) error {
	for _, d := range []string{hostDir, filepath.Join(hostDir, manifest.ConfigDir)} {
		if err := p.ensureDir(d, 0, 0, p.asRoot); err != nil {
			return err
		}
	}
	rep := filepath.Join(hostDir, manifest.ReportsDir)
	if acct != nil {
		return p.ensureDir(rep, acct.uid, acct.gid, true)
	}
	return p.ensureDir(rep, 0, 0, false)
}

// ensureDir makes d a directory with mode 0755, owned by uid:gid when own.
// An existing directory keeps its content.
func (p *Publisher) ensureDir(d string, uid, gid int, own bool) error {
	fi, err := os.Lstat(d)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if fi, err = os.Lstat(d); err != nil {
			return err
		}
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (%s); remove it", d, fi.Mode().Type())
	}
	if fi.Mode().Perm() != 0o755 {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && own && (int(st.Uid) != uid || int(st.Gid) != gid) {
		if err := os.Lchown(d, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

type writeStats struct {
	copied, linked int
	bytes          int64
}

// linkSources indexes the files of the current version by content, so an
// unchanged file (even moved) becomes a hard link instead of a copy.
func linkSources(hostDir string, cur *manifest.Manifest) map[contentKey]string {
	idx := map[contentKey]string{}
	if cur == nil {
		return idx
	}
	dir := filepath.Join(hostDir, manifest.ConfigDir, cur.Version)
	for _, f := range cur.Files {
		k := contentKey{f.SHA256, f.Mode, f.Size}
		if _, ok := idx[k]; !ok {
			idx[k] = filepath.Join(dir, filepath.FromSlash(f.Path))
		}
	}
	return idx
}

type contentKey struct {
	sha  string
	mode uint32
	size int64
}

func planCopies(hostDir string, cur *manifest.Manifest, tree *Tree, version string) (copied, linked int, bytes int64) {
	if fi, err := os.Lstat(filepath.Join(hostDir, manifest.ConfigDir, version)); err == nil && fi.IsDir() {
		return 0, 0, 0 // a kept version goes live again
	}
	idx := linkSources(hostDir, cur)
	for _, e := range tree.Files {
		if src, ok := idx[contentKey{e.SHA256, e.Mode, e.Size}]; ok && sameSize(src, e.Size) {
			linked++
			continue
		}
		copied++
		bytes += e.Size
	}
	return copied, linked, bytes
}

func sameSize(p string, size int64) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == size
}

// staged is a directory written completely under a temporary name.
type staged struct {
	tmp, final string
	// madeParent: the parent was created for it, and goes if it is discarded.
	madeParent bool
}

// commit renames the directory into place and makes the rename durable.
func (s *staged) commit() error {
	if s.tmp == "" {
		return nil
	}
	if err := os.Rename(s.tmp, s.final); err != nil {
		return err
	}
	s.tmp, s.madeParent = "", false
	return syncDir(filepath.Dir(s.final))
}

// discard removes what commit did not put in place.
func (s *staged) discard() {
	if s.tmp != "" {
		removeAll(s.tmp)
		s.tmp = ""
	}
	if s.madeParent {
		os.Remove(filepath.Dir(s.final))
		s.madeParent = false
	}
}

// writeVersion writes config/<version> completely and durably under a
// temporary name; commit renames it into place. On error nothing is left.
func (p *Publisher) writeVersion(ctx context.Context, hostDir, version string, cur *manifest.Manifest, tree *Tree) (*staged, writeStats, error) {
	var st writeStats
	configDir := filepath.Join(hostDir, manifest.ConfigDir)
	s := &staged{final: filepath.Join(configDir, version)}
	if fi, err := os.Lstat(s.final); err == nil && fi.IsDir() {
		// An earlier version with this very content (a revert) is still
		// kept: it was renamed into place complete, so it is reused.
		return s, st, nil
	}
	tmp, err := os.MkdirTemp(configDir, ".tmp-"+version+"-")
	if err != nil {
		return nil, st, err
	}
	s.tmp = tmp
	ok := false
	defer func() {
		if !ok {
			s.discard()
		}
	}()
	idx := linkSources(hostDir, cur)
	dirs := map[string]bool{tmp: true}
	for _, e := range tree.Files {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		dst := filepath.Join(tmp, filepath.FromSlash(e.Path))
		if err := mkdirs(filepath.Dir(dst), tmp, dirs); err != nil {
			return nil, st, err
		}
		if src, found := idx[contentKey{e.SHA256, e.Mode, e.Size}]; found && sameSize(src, e.Size) {
			if err := os.Link(src, dst); err == nil {
				st.linked++
				continue
			}
			// No hard link (another file system, link count limit): copy.
		}
		if err := copyFile(e, dst); err != nil {
			return nil, st, fmt.Errorf("%s: %w", e.Path, err)
		}
		st.copied++
		st.bytes += e.Size
	}
	// Deepest first, so each directory's entries are durable before its
	// parent's entry for it.
	var ds []string
	for d := range dirs {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return len(ds[i]) > len(ds[j]) })
	for _, d := range ds {
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, st, err
		}
		if err := syncDir(d); err != nil {
			return nil, st, err
		}
	}
	ok = true
	return s, st, nil
}

func mkdirs(d, top string, made map[string]bool) error {
	if made[d] {
		return nil
	}
	if d != top {
		if err := mkdirs(filepath.Dir(d), top, made); err != nil {
			return err
		}
	}
	if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	made[d] = true
	return nil
}

// ErrChanged is returned (wrapped) when a file changed between hashing and
// copying: its manifest line would lie.
var ErrChanged = errors.New("changed while being published; run bento deploy again")

// copyFile copies e.Src to dst (which must not exist), read-only, checks
// that what was copied has the hash the manifest will announce, and syncs.
func copyFile(e Entry, dst string) error {
	in, err := os.Open(e.Src)
	if err != nil {
		return err
	}
	defer in.Close()
	perm := fs.FileMode(0o444)
	if e.Mode&0o111 != 0 {
		perm = 0o555
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	h := newHasher()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err == nil && (n != e.Size || h.hex() != e.SHA256) {
		err = fmt.Errorf("%s %w", e.Src, ErrChanged)
	}
	if err == nil {
		// The umask may have taken bits off: the mode is part of the version.
		err = out.Chmod(perm)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeExtra writes the extra files of a new version under a temporary
// name beside secrets/<version>; commit renames it into place.
func (p *Publisher) writeExtra(ctx context.Context, hostDir, version string, x *Extra) (*staged, error) {
	base := filepath.Join(hostDir, manifest.SecretsDir)
	s := &staged{final: filepath.Join(base, version)}
	if _, err := os.Lstat(base); errors.Is(err, fs.ErrNotExist) {
		s.madeParent = true
	}
	if err := p.ensureDir(base, 0, 0, p.asRoot); err != nil {
		s.discard()
		return nil, err
	}
	if fi, err := os.Lstat(s.final); err == nil && fi.IsDir() {
		return s, nil
	}
	tmp, err := os.MkdirTemp(base, ".tmp-"+version+"-")
	if err != nil {
		s.discard()
		return nil, err
	}
	s.tmp = tmp
	if err := x.Write(ctx, tmp); err != nil {
		s.discard()
		return nil, err
	}
	if err := syncDir(tmp); err != nil {
		s.discard()
		return nil, err
	}
	return s, nil
}

// writeManifest replaces manifest.json atomically: a temporary file in the
// same directory, synced, renamed over the old one, then the directory
// synced so the rename survives a crash.
func writeManifest(hostDir string, m *manifest.Manifest) (int64, error) {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return 0, err
	}
	data = append(data, '\n')
	if err := writeAtomic(filepath.Join(hostDir, manifest.ManifestFile), data, 0o644); err != nil {
		return 0, err
	}
	return int64(len(data)), nil
}

func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// removeStaleTemps removes the temporary manifests a crashed deploy left
// (we hold the lock, so none is being written).
func removeStaleTemps(hostDir string) {
	stale, _ := filepath.Glob(filepath.Join(hostDir, "."+manifest.ManifestFile+".tmp-*"))
	for _, f := range stale {
		os.Remove(f)
	}
}

func syncDir(d string) error {
	f, err := os.Open(d)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// pruneVersions removes, under config/ and secrets/, every version not in
// keep and every temporary directory a crashed deploy left. It runs under
// the lock, so no temporary directory belongs to a live deploy.
func pruneVersions(hostDir string, keep map[string]bool) ([]string, error) {
	var pruned []string
	var errs []error
	for _, sub := range []string{manifest.ConfigDir, manifest.SecretsDir} {
		base := filepath.Join(hostDir, sub)
		entries, err := os.ReadDir(base)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		removed := false
		for _, e := range entries {
			n := e.Name()
			if keep[n] || !(isVersionName(n) || strings.HasPrefix(n, ".tmp-")) {
				continue
			}
			if err := removeAll(filepath.Join(base, n)); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = true
			if sub == manifest.ConfigDir && isVersionName(n) {
				pruned = append(pruned, n)
			}
		}
		if removed {
			if err := syncDir(base); err != nil {
				errs = append(errs, err)
			}
		}
	}
	sort.Strings(pruned)
	return pruned, errors.Join(errs...)
}

// removeAll is os.RemoveAll that also gets through directories a non-root
// owner made read-only (secrets directories may be 0500).
func removeAll(p string) error {
	if err := os.RemoveAll(p); err == nil {
		return nil
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
