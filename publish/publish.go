// Package publish fills the SFTP chroots that hosts pull from: for each host
// it computes the tree that ships (what Nix sees of the fleet), names it by
// a content hash, writes a new version directory beside the live one (hard
// links for files unchanged since the previous version or already copied
// for another host), then swaps manifest.json by rename. A client reading
// at any moment sees either the old or the new manifest, and every file the
// manifest it read names is present with the right hash.
//
// Layout (see manifest for the names):
//
//	<root>/.bento-deploy.lock       flock: one deploy at a time
//	<root>/<host>/                  root:root 0755 (sshd's ChrootDirectory rule)
//	  manifest.json                 replaced atomically
//	  config/<version>/…            the tree, files 0444/0555, kept: current + previous
//	  secrets/<version>/…           the host's secrets (Target.Extra)
//	  reports/                      owned by the host's SFTP user, never emptied
package publish

import (
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

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
// <host>/secrets/<version>/. Its files count in the version and are listed
// in the manifest's secrets.
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
	// previous version; Shared ones are hard links to a file another
	// host of the same deploy copied (the same flake, written once).
	Copied int `json:"copied"`
	Linked int `json:"linked"`
	Shared int `json:"shared"`
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
	// pool maps content to a file this deploy copied into some host's
	// temporary directory (which stays put until the commit), so the other
	// hosts link it instead of writing the same bytes again.
	poolMu sync.Mutex
	pool   map[contentKey]*pooled
	// umaskClears: the umask takes bits off 0755/0444, so every directory
	// and file made needs a chmod (tens of thousands per deploy otherwise).
	umaskClears bool
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
	p := &Publisher{opts: opts, root: root, asRoot: os.Geteuid() == 0, hashes: NewHashCache(), trees: map[Source]*treeCall{}, pool: map[contentKey]*pooled{}}
	p.umaskClears = umask()&0o755 != 0
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

// Publish publishes every target. One failing host never stops the
// others; results come in the order of targets.
//
// Durability is batched: instead of an fsync per file and directory
// (thousands per deploy, each a journal commit), every host's new
// directories are written first, then one syncfs(2) makes them durable,
// then they are renamed into place and the new manifests written, another
// syncfs, then the manifests are renamed over the old ones and a last
// syncfs makes the renames durable. A crash at any point leaves each host
// with its old or its new manifest, and whichever it is names complete,
// durable files.
func (p *Publisher) Publish(ctx context.Context, targets []Target) []Result {
	jobs := make([]*hostJob, len(targets))
	seen := map[string]bool{}
	for i, t := range targets {
		// The same host twice would race for one chroot.
		if name := t.Host.Name; seen[name] {
			jobs[i] = (&hostJob{name: name, res: Result{Host: name}}).fail(errors.New("listed twice"))
		}
		seen[t.Host.Name] = true
	}
	p.parallel(len(targets), func(i int) {
		if jobs[i] != nil {
			return
		}
		start := time.Now()
		jobs[i] = p.prepare(ctx, targets[i])
		jobs[i].res.Duration = time.Since(start)
	})
	if !p.opts.DryRun {
		p.commit(ctx, jobs)
	}
	results := make([]Result, len(jobs))
	for i, j := range jobs {
		r := j.res
		if r.Err != nil {
			r.Status = StatusFailed
			r.Err = fmt.Errorf("host %s: publish: %w", j.name, r.Err)
		}
		results[i] = r
	}
	return results
}

// parallel runs f(i) for i < n, Jobs at a time.
func (p *Publisher) parallel(n int, f func(i int)) {
	var g errgroup.Group
	g.SetLimit(p.opts.Jobs)
	for i := 0; i < n; i++ {
		g.Go(func() error { f(i); return nil })
	}
	g.Wait()
}

// hostJob is one host on its way through Publish.
type hostJob struct {
	name    string
	hostDir string
	res     Result
	m       *manifest.Manifest
	// keep are the versions pruning spares (nil: do not prune).
	keep   map[string]bool
	stages []*staged
	// tmpManifest is the new manifest under its temporary name.
	tmpManifest string
}

func (j *hostJob) fail(err error) *hostJob {
	j.res.Err = err
	for _, s := range j.stages {
		s.discard()
	}
	j.stages = nil
	if j.tmpManifest != "" {
		os.Remove(j.tmpManifest)
		j.tmpManifest = ""
	}
	return j
}

// writing tells whether the job still has something to put in place.
func (j *hostJob) writing() bool {
	return j.res.Err == nil && (j.res.Status == StatusPublished || j.res.Status == StatusUpdated)
}

// prepare decides what a host needs and, unless in a dry run, writes its
// new directories under temporary names (not yet durable).
func (p *Publisher) prepare(ctx context.Context, t Target) *hostJob {
	name := t.Host.Name
	j := &hostJob{name: name, res: Result{Host: name, DryRun: p.opts.DryRun, ExpectedToplevel: t.ExpectedToplevel}}
	if err := fleet.ValidateName(name); err != nil {
		return j.fail(err)
	}
	if err := ctx.Err(); err != nil {
		return j.fail(err)
	}
	tree, err := p.Tree(ctx, t.Source)
	if err != nil {
		return j.fail(err)
	}
	res := &j.res
	res.Notes = tree.Notes
	var extra []manifest.File
	if t.Extra != nil {
		extra = t.Extra.Files
	}
	version := Version(tree.Manifest(), extra)
	res.Version, res.Files = version, len(tree.Files)

	hostDir := filepath.Join(p.root, name)
	j.hostDir = hostDir
	if fi, err := os.Lstat(hostDir); err == nil && !fi.IsDir() {
		return j.fail(fmt.Errorf("%s is not a directory (%s); refusing to publish through it: remove it", hostDir, fi.Mode().Type()))
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return j.fail(err)
	}
	var acct *account
	if p.opts.Users {
		a, err := lookupAccount(t.Host.Options.User, hostDir)
		if err != nil {
			return j.fail(err)
		}
		acct = &a
	}

	cur, curErr := readManifest(hostDir, name)
	if curErr != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("the current manifest is unreadable (%v): publishing afresh, no old version pruned", curErr))
	} else {
		j.keep = map[string]bool{version: true}
	}
	if cur != nil {
		res.Previous = cur.Version
		if j.keep != nil {
			j.keep[cur.Version] = true
		}
	}
	j.m = &manifest.Manifest{
		Format:           1, // the publisher still writes format-1 trees
		Host:             name,
		Version:          version,
		ExpectedToplevel: t.ExpectedToplevel,
		Flake:            flakeOf(t.Host),
		Files:            tree.Manifest(),
		Secrets:          extra,
		Cache:            t.Cache,
		Interval:         t.Host.Options.Interval,
	}
	live := cur != nil && cur.Version == version && p.versionPresent(hostDir, version, t.Extra != nil)
	switch {
	case live && sameMeta(cur, j.m):
		res.Status = StatusUnchanged
		res.Previous = ""
		res.ExpectedToplevel = cur.ExpectedToplevel
	case live:
		res.Status = StatusUpdated
		j.keep = nil // nothing new, nothing to prune
	default:
		res.Status = StatusPublished
	}
	if p.opts.DryRun {
		if res.Status == StatusPublished {
			res.Copied, res.Linked, res.Shared, res.BytesWritten = p.planCopies(hostDir, cur, tree, version)
		}
		return j
	}

	if err := p.ensureLayout(hostDir, acct); err != nil {
		return j.fail(err)
	}
	if res.Status != StatusPublished {
		return j
	}
	// Both directories are written completely under temporary names
	// before either is renamed into place: a failure leaves nothing.
	if t.Extra != nil {
		s, err := p.writeExtra(ctx, hostDir, version, t.Extra)
		if err != nil {
			return j.fail(fmt.Errorf("secrets: %w", err))
		}
		j.stages = append(j.stages, s)
	}
	s, st, err := p.writeVersion(ctx, hostDir, version, cur, tree)
	if err != nil {
		return j.fail(err)
	}
	j.stages = append(j.stages, s)
	res.Copied, res.Linked, res.Shared, res.BytesWritten = st.copied, st.linked, st.shared, st.bytes
	return j
}

// commit makes the prepared jobs durable and live, in the order the
// Publish comment gives.
func (p *Publisher) commit(ctx context.Context, jobs []*hostJob) {
	if err := ctx.Err(); err != nil {
		for _, j := range jobs {
			if j.writing() {
				j.fail(fmt.Errorf("interrupted before anything went live: %w", err))
			}
		}
		return
	}
	// 1. The new directories' contents reach the disk.
	p.syncJobs(jobs, "writing the new versions")
	// 2. Renamed into place; the new manifests written aside.
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		for i := len(j.stages) - 1; i >= 0; i-- {
			if err := j.stages[i].commit(); err != nil {
				j.fail(err)
				break
			}
		}
		if j.res.Err != nil {
			continue
		}
		j.stages = nil
		removeStaleTemps(j.hostDir)
		j.m.PublishedAt = p.opts.Now().UTC().Truncate(time.Millisecond)
		tmp, n, err := writeManifestTemp(j.hostDir, j.m)
		if err == nil {
			err = advanceMtime(j.hostDir, tmp, p.opts.Now())
		}
		if err != nil {
			j.fail(err)
			continue
		}
		j.tmpManifest = tmp
		j.res.BytesWritten += n
	}
	p.syncJobs(jobs, "writing the new manifests")
	// 3. The switch: each manifest.json replaced by rename.
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		if err := os.Rename(j.tmpManifest, filepath.Join(j.hostDir, manifest.ManifestFile)); err != nil {
			j.fail(err)
			continue
		}
		j.tmpManifest = ""
	}
	p.syncJobs(jobs, "making the new manifests durable")
	// 4. Old versions go; a failure here leaves a directory for the next
	// deploy to prune, while the publication is live already.
	p.parallel(len(jobs), func(i int) {
		j := jobs[i]
		if j.res.Err != nil || j.res.Status != StatusPublished || j.keep == nil {
			return
		}
		pruned, err := pruneVersions(j.hostDir, j.keep)
		j.res.Pruned = pruned
		if err != nil {
			j.res.Notes = append(j.res.Notes, fmt.Sprintf("pruning old versions: %v", err))
		}
		p.opts.Logger.Debug("published", "host", j.name, "version", j.res.Version, "status", j.res.Status, "copied", j.res.Copied, "linked", j.res.Linked)
	})
}

// syncJobs flushes the file systems the writing jobs live on (one
// syncfs(2) per file system); a job whose file system failed to flush
// fails, with nothing of it live yet or, after the manifest rename, with
// its new manifest live but maybe not durable (the error says so).
func (p *Publisher) syncJobs(jobs []*hostJob, what string) {
	byDev := map[uint64][]*hostJob{}
	dirs := map[uint64]string{}
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(j.hostDir, &st); err != nil {
			j.fail(err)
			continue
		}
		dev := uint64(st.Dev)
		byDev[dev] = append(byDev[dev], j)
		dirs[dev] = j.hostDir
	}
	for dev, js := range byDev {
		if err := syncFS(dirs[dev]); err != nil {
			for _, j := range js {
				j.fail(fmt.Errorf("%s: syncfs: %w", what, err))
			}
		}
	}
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
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
	return cur.Host == m.Host && cur.Flake == m.Flake && sameCache(cur.Cache, m.Cache) && cur.Interval == m.Interval &&
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
	copied, linked, shared int
	bytes                  int64
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

func (p *Publisher) planCopies(hostDir string, cur *manifest.Manifest, tree *Tree, version string) (copied, linked, shared int, bytes int64) {
	if fi, err := os.Lstat(filepath.Join(hostDir, manifest.ConfigDir, version)); err == nil && fi.IsDir() {
		return 0, 0, 0, 0 // a kept version goes live again
	}
	idx := linkSources(hostDir, cur)
	for _, e := range tree.Files {
		k := contentKey{e.SHA256, e.Mode, e.Size}
		if src, ok := idx[k]; ok && sameSize(src, e.Size) {
			linked++
			continue
		}
		if e, mine := p.claim(k); !mine {
			shared++
			continue
		} else {
			e.fill("")
		}
		copied++
		bytes += e.Size
	}
	return copied, linked, shared, bytes
}

// pooled is one content of the pool: the first host that needs it copies
// it, the others wait for that copy and link it.
type pooled struct {
	done chan struct{}
	// path is the copy; "" when the copy failed (the others copy too).
	path string
}

// claim returns the pool entry of k, and whether the caller must fill it
// (then it must call fill, even on failure).
func (p *Publisher) claim(k contentKey) (*pooled, bool) {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	if e, ok := p.pool[k]; ok {
		return e, false
	}
	e := &pooled{done: make(chan struct{})}
	p.pool[k] = e
	return e, true
}

func (e *pooled) fill(path string) {
	e.path = path
	close(e.done)
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

// commit renames the directory into place (Publish syncs afterwards).
func (s *staged) commit() error {
	if s.tmp == "" {
		return nil
	}
	if err := os.Rename(s.tmp, s.final); err != nil {
		return err
	}
	s.tmp, s.madeParent = "", false
	return nil
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

// writeVersion writes config/<version> completely under a temporary name;
// Publish syncs it, then commit renames it into place. On error nothing is
// left.
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
		k := contentKey{e.SHA256, e.Mode, e.Size}
		if src, found := idx[k]; found && sameSize(src, e.Size) {
			if err := os.Link(src, dst); err == nil {
				st.linked++
				continue
			}
			// No hard link (another file system, link count limit): copy.
		}
		entry, mine := p.claim(k)
		if !mine {
			<-entry.done
			// No path if that copy failed; gone if that host failed and
			// discarded its directory: copy then.
			if entry.path != "" && os.Link(entry.path, dst) == nil {
				st.shared++
				continue
			}
		}
		err := copyFile(e, dst, p.umaskClears)
		if mine {
			if err == nil {
				entry.fill(dst)
			} else {
				entry.fill("")
			}
		}
		if err != nil {
			return nil, st, fmt.Errorf("%s: %w", e.Path, err)
		}
		st.copied++
		st.bytes += e.Size
	}
	// MkdirTemp made the top 0700; the others lost bits only to a umask.
	for d := range dirs {
		if d == tmp || p.umaskClears {
			if err := os.Chmod(d, 0o755); err != nil {
				return nil, st, err
			}
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

// copyFile copies e.Src to dst (which must not exist), read-only, and
// checks that what was copied has the hash the manifest will announce.
func copyFile(e Entry, dst string, chmod bool) error {
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
	if err == nil && chmod {
		// The umask took bits off: the mode is part of the version.
		err = out.Chmod(perm)
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
	return s, nil
}

// writeManifestTemp writes m beside manifest.json under a temporary name,
// for Publish to sync and rename over the old one. The JSON is compact
// with one file per line: clients fetch it on every change, and every
// byte of indentation is paid by every host.
func writeManifestTemp(hostDir string, m *manifest.Manifest) (string, int64, error) {
	data, err := json.Marshal(m)
	if err != nil {
		return "", 0, err
	}
	// In compact JSON a quote inside a string is escaped, so these
	// sequences can only be the structure of the file list.
	data = bytes.ReplaceAll(data, []byte(`[{"path":`), []byte("[\n{\"path\":"))
	data = bytes.ReplaceAll(data, []byte(`},{"path":`), []byte("},\n{\"path\":"))
	data = append(data, '\n')
	f, err := os.CreateTemp(hostDir, "."+manifest.ManifestFile+".tmp-")
	if err != nil {
		return "", 0, err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, err
	}
	return f.Name(), int64(len(data)), nil
}

// removeStaleTemps removes the temporary manifests a crashed deploy left
// (we hold the lock, so none is being written).
func removeStaleTemps(hostDir string) {
	stale, _ := filepath.Glob(filepath.Join(hostDir, "."+manifest.ManifestFile+".tmp-*"))
	for _, f := range stale {
		os.Remove(f)
	}
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
		for _, e := range entries {
			n := e.Name()
			if keep[n] || !(isVersionName(n) || strings.HasPrefix(n, ".tmp-")) {
				continue
			}
			if err := removeAll(filepath.Join(base, n)); err != nil {
				errs = append(errs, err)
				continue
			}
			if sub == manifest.ConfigDir && isVersionName(n) {
				pruned = append(pruned, n)
			}
		}
	}
	sort.Strings(pruned)
	return pruned, errors.Join(errs...)
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

// umask reads the process's umask without changing it (syscall.Umask
// would, racing with other goroutines); 0o777 (chmod everything) when
// unknown.
func umask() int {
	data, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "Umask:"); ok {
				if n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 32); err == nil {
					return int(n)
				}
			}
		}
	}
	return 0o777
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
