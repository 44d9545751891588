// Package publish fills the SFTP chroots that hosts pull from (publication
// format 2): for each host it computes the tree that ships (what Nix sees
// of the fleet), names it by a content hash, makes sure the host's
// objects/ holds every content the tree has (one read-only file per
// distinct sha256, hard-linked from a fleet-wide pool where each content
// is written once), then swaps manifest.json by rename. A client reading
// at any moment sees either the old or the new manifest, and every object
// a manifest names stays in the chroot for as long as a reader may still
// hold that manifest: until it has not been live for Options.Retention.
//
// Layout (see manifest for the names inside a chroot):
//
//	<root>/.bento-deploy.lock          flock: one deploy at a time
//	<root>/.bento-objects/<aa>/<rest>  the pool: root-only (0700), objects 0444
//	<root>/.bento-state/<host>/        root-only: history.json (which manifests
//	                                   were live when) and a copy of each
//	<root>/<host>/                     root:root 0755 (sshd's ChrootDirectory rule)
//	  manifest.json                    replaced atomically; "format": 2
//	  objects/<aa>/<rest>              hard links into the pool, 0444
//	  secrets/<version>/…              the host's secrets (Target.Extra)
//	  reports/                         owned by the host's SFTP user, never emptied
//
// A fetch-mode host (services.bento.mode = "fetch") evaluates nothing: its
// manifest lists no file and its chroot receives no object, so it cannot
// read the fleet's configuration.
package publish

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// writeFormat is the manifest format this publisher writes.
const writeFormat = 2

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
	// Retention is how long an object (and a secrets/<version>, and a
	// format-1 config/) stays in a chroot after the last manifest naming it
	// stopped being live: a host that read a manifest up to that long ago
	// still finds everything it names. DefaultRetention when 0.
	Retention time.Duration
	// Now gives the publication time; time.Now when nil.
	Now func() time.Time
	// Logger receives debug lines; nil discards.
	Logger *slog.Logger
	// Hook, when set, is called at each step of a publication (step names
	// are the Step constants; host is "" for the fleet-wide steps). Tests
	// use it to kill the process at every point.
	Hook func(step Step, host string)
}

// Step names a point of a publication, for Options.Hook.
type Step string

const (
	// StepPrepared: new objects are in the pool under temporary names.
	StepPrepared Step = "prepared"
	// StepSynced: their content is durable.
	StepSynced Step = "synced"
	// StepLinked: a host's chroot links every object its new manifest names.
	StepLinked Step = "linked"
	// StepManifestWritten: a host's new manifest is beside the old one.
	StepManifestWritten Step = "manifest-written"
	// StepLive: a host's new manifest replaced the old one.
	StepLive Step = "live"
	// StepRecorded: the host's retention record names the new manifest.
	StepRecorded Step = "recorded"
	// StepRemoved: what left the retention window left the host's chroot.
	StepRemoved Step = "removed"
	// StepCollected: the pool dropped what no chroot links.
	StepCollected Step = "collected"
)

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
	// Counted in distinct contents (objects): Copied ones were written
	// into the pool by this host; Shared ones were linked into the chroot
	// from the pool (written by another host of this deploy, or earlier);
	// Linked ones were in the chroot already (nothing written).
	Copied int `json:"copied"`
	Linked int `json:"linked"`
	Shared int `json:"shared"`
	// BytesWritten counts object contents and the manifest.
	BytesWritten int64 `json:"bytesWritten"`
	// Pruned are the versions that left the retention window (their
	// objects and secrets left the chroot unless a newer one names them).
	Pruned []string `json:"pruned,omitempty"`
	// Removed counts the objects removed from the chroot.
	Removed  int           `json:"removed,omitempty"`
	Notes    []string      `json:"notes,omitempty"`
	Err      error         `json:"-"`
	Duration time.Duration `json:"-"`
}

// Stage names publication in a host's *fleet.HostError.
const Stage = "publish"

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
	versions map[*Tree]treeMemo
	// pool maps each content this deploy needs somewhere to its entry.
	poolMu   sync.Mutex
	pool     map[string]*object
	poolDirs map[string]bool
	// copies caches, by version, the objects a manifest copy names.
	copiesMu sync.Mutex
	copies   map[string]map[string]bool
	// removed are the objects some chroot dropped: the pool checks them.
	removedMu sync.Mutex
	removed   map[string]bool
	// A deploy that did not finish leaves a marker naming the chroots
	// that may hold objects nothing names (and the pool temporary files):
	// pending are those hosts, scanned whole by the next deploy that
	// publishes them; poolScan says the pool is scanned whole too.
	pending  map[string]bool
	poolScan bool
	// markMu guards the marker and leftover: the hosts the marker must
	// still name when this deploy ends.
	markMu   sync.Mutex
	marked   bool
	leftover map[string]bool
	inflight map[string]bool
	// poolFailed: the pool could not be cleaned; the marker stays.
	poolFailed atomic.Bool
	// umaskClears: the umask takes bits off 0755/0444, so every directory
	// and file made needs a chmod.
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
	if opts.Retention < 0 {
		return nil, fmt.Errorf("retention %s is negative: pass a duration such as 1h", opts.Retention)
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	p := &Publisher{opts: opts, root: root, asRoot: os.Geteuid() == 0, hashes: NewHashCache(), trees: map[Source]*treeCall{}, versions: map[*Tree]treeMemo{},
		pool: map[string]*object{}, poolDirs: map[string]bool{}, copies: map[string]map[string]bool{}, removed: map[string]bool{}}
	p.umaskClears = umask()&0o755 != 0
	if p.opts.Jobs <= 0 {
		p.opts.Jobs = 2 * runtime.NumCPU()
	}
	if p.opts.Retention == 0 {
		p.opts.Retention = DefaultRetention
	}
	if p.opts.Now == nil {
		p.opts.Now = time.Now
	}
	if p.opts.Logger == nil {
		p.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if p.opts.Hook == nil {
		p.opts.Hook = func(Step, string) {}
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
		p.loadMarker()
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

// treeVersion returns a tree's manifest lines (shared, read-only) and
// version; computed once per tree for the hosts without secrets (every
// host of a flake shares its tree).
func (p *Publisher) treeVersion(tree *Tree, extra []manifest.File) ([]manifest.File, string) {
	p.mu.Lock()
	memo, ok := p.versions[tree]
	p.mu.Unlock()
	if !ok {
		memo.files = tree.Manifest()
		memo.version = Version(memo.files, nil)
		p.mu.Lock()
		p.versions[tree] = memo
		p.mu.Unlock()
	}
	if len(extra) == 0 {
		return memo.files, memo.version
	}
	return memo.files, Version(memo.files, extra)
}

type treeMemo struct {
	files   []manifest.File
	version string
}

// Publish publishes every target. One failing host never stops the
// others; results come in the order of targets.
//
// The order makes a kill -9 at any point harmless, and durability is
// batched (one syncfs(2) per step instead of an fsync per file):
//
//  1. every new content is written into the pool under a temporary name;
//  2. syncfs: the content is durable;
//  3. renamed to its pool name, hard-linked into each chroot's objects/;
//     each new manifest written beside the old one;
//  4. syncfs; each manifest.json replaced by rename; syncfs;
//  5. each host's retention record names the new manifest; then, only
//     for what no manifest of the retention window names, objects,
//     secrets and format-1 config/ leave the chroot;
//  6. the pool drops what no chroot links.
//
// A crash leaves each host with its old or its new manifest, and every
// object either names in its chroot: nothing is removed before step 5,
// and step 5 never removes what the live manifest names.
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
			r.Err = &fleet.HostError{Host: j.name, Stage: Stage, Err: r.Err}
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
	cur     *manifest.Manifest
	hist    *history
	// histChanged: loading the record repaired it; it is saved even when
	// nothing is published.
	histChanged bool
	// objs are the objects the chroot lacks (per the live manifest).
	objs   []*object
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

// prepare decides what a host needs and, unless in a dry run, writes the
// new contents into the pool under temporary names (not yet durable).
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
	// The version is the tree's hash for every mode, so that a change of
	// the flake is a new version for a fetch-mode host too; but a host in
	// fetch mode evaluates nothing, so it receives none of the tree: no
	// host can read the fleet's configuration through it.
	files, version := p.treeVersion(tree, extra)
	entries := tree.Files
	if t.Host.Options.Mode == manifest.ModeFetch {
		files, entries = []manifest.File{}, nil
	}
	res.Version, res.Files = version, len(files)

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

	// Only the head of the live manifest is decoded at first: that is all
	// an unchanged host needs, and decoding every host's file list would
	// be most of an unchanged deploy's time.
	// Faster still: the retention record keeps the head of the manifest
	// it saw go live, with the file's identity; while the file is that
	// very file, nothing is read from it.
	var curFiles manifestFiles
	var curErr error
	cur, curObjects, known := p.liveHead(name, hostDir)
	if !known {
		cur, curFiles, curErr = readManifestHead(hostDir, name)
		curObjects = cur != nil && cur.Format >= 2 && len(curFiles) > 0
	}
	if curErr != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("the current manifest is unreadable (%v): publishing afresh", curErr))
	}
	j.cur = cur
	if cur != nil {
		res.Previous = cur.Version
	}
	j.m = &manifest.Manifest{
		Format:           writeFormat,
		Host:             name,
		Version:          version,
		ExpectedToplevel: t.ExpectedToplevel,
		Flake:            flakeOf(t.Host),
		Files:            files,
		Secrets:          extra,
		Cache:            t.Cache,
		Interval:         t.Host.Options.Interval,
	}
	live := cur != nil && cur.Format == writeFormat && cur.Version == version && curObjects == hasObjects(j.m) &&
		(t.Extra == nil || isDir(filepath.Join(hostDir, manifest.SecretsDir, version)))
	switch {
	case live && sameMeta(cur, j.m):
		res.Status = StatusUnchanged
		res.Previous = ""
		res.ExpectedToplevel = cur.ExpectedToplevel
	case live:
		res.Status = StatusUpdated
	default:
		res.Status = StatusPublished
	}
	// What the live manifest names is in the chroot: nothing removes it.
	have := map[string]bool{}
	if curObjects && res.Status == StatusPublished {
		// Same version and format, same files: every host of a flake
		// shares its previous version, which is decoded once.
		p.copiesMu.Lock()
		sums, ok := p.copies[cur.Version]
		p.copiesMu.Unlock()
		if !ok {
			if curFiles == nil {
				curFiles, _ = readCapped(filepath.Join(hostDir, manifest.ManifestFile), manifest.MaxSize)
			}
			if files := curFiles.all(); files != nil {
				sums = make(map[string]bool, len(files))
				for _, f := range files {
					sums[f.SHA256] = true
				}
				p.copiesMu.Lock()
				p.copies[cur.Version] = sums
				p.copiesMu.Unlock()
			}
		}
		have = sums
	}
	if have == nil {
		have = map[string]bool{}
	}
	if p.opts.DryRun {
		if res.Status == StatusPublished {
			p.planObjects(j, entries, have)
		}
		return j
	}
	var notes []string
	j.hist, notes, j.histChanged = p.loadHistory(name, hostDir, cur, curObjects, p.opts.Now())
	res.Notes = append(res.Notes, notes...)

	if err := p.ensureLayout(hostDir, acct); err != nil {
		return j.fail(err)
	}
	if res.Status != StatusPublished {
		return j
	}
	if t.Extra != nil {
		s, err := p.writeExtra(ctx, hostDir, version, t.Extra)
		if err != nil {
			return j.fail(fmt.Errorf("secrets: %w", err))
		}
		j.stages = append(j.stages, s)
	}
	seenSum := map[string]bool{}
	for _, e := range entries {
		if seenSum[e.SHA256] {
			continue
		}
		seenSum[e.SHA256] = true
		// Named by the live manifest, so in the chroot, unless hands or a
		// damaged disk removed it: a new publication checks (one lstat)
		// and links it again rather than publish a manifest naming a
		// missing object.
		if have[e.SHA256] && objectPresent(hostDir, e.SHA256) {
			res.Linked++
			continue
		}
		if err := ctx.Err(); err != nil {
			return j.fail(err)
		}
		o, mine := p.objectFor(e.SHA256, e.Size)
		j.objs = append(j.objs, o)
		if !mine {
			res.Shared++
			continue
		}
		n, err := p.ready(o, e.Src)
		if err != nil {
			o.err = fmt.Errorf("%s: %w", e.Path, err)
			return j.fail(o.err)
		}
		if n > 0 {
			res.Copied++
			res.BytesWritten += n
		} else {
			res.Shared++
		}
	}
	return j
}

// planObjects counts what a publication would write (dry run).
func (p *Publisher) planObjects(j *hostJob, entries []Entry, have map[string]bool) {
	seen := map[string]bool{}
	for _, e := range entries {
		if seen[e.SHA256] {
			continue
		}
		seen[e.SHA256] = true
		if have[e.SHA256] || exists(filepath.Join(j.hostDir, filepath.FromSlash(manifest.ObjectPath(e.SHA256)))) {
			j.res.Linked++
			continue
		}
		o, mine := p.objectFor(e.SHA256, e.Size)
		if mine && !exists(o.final) {
			j.res.Copied++
			j.res.BytesWritten += e.Size
			continue
		}
		j.res.Shared++
	}
}

// commit makes the prepared jobs durable and live, in the order the
// Publish comment gives, then applies the retention rule.
func (p *Publisher) commit(ctx context.Context, jobs []*hostJob) {
	if err := ctx.Err(); err != nil {
		for _, j := range jobs {
			if j.writing() {
				j.fail(fmt.Errorf("interrupted before anything went live: %w", err))
			}
		}
		p.discardPool()
		return
	}
	p.opts.Hook(StepPrepared, "")
	// 2. The new objects' and secrets' contents reach the disk (a syncfs
	// flushes the whole file system: none when nothing was written).
	writing := false
	for _, j := range jobs {
		writing = writing || j.writing()
	}
	if writing {
		p.syncJobs(jobs, "writing the new objects", true)
	}
	p.opts.Hook(StepSynced, "")
	var committing []*hostJob
	var names []string
	for _, j := range jobs {
		if j.writing() {
			committing = append(committing, j)
			names = append(names, j.name)
		}
	}
	if len(committing) > 0 {
		// From here on a kill may leave links that no manifest names; the
		// marker makes the next deploy look for them.
		if err := p.mark(names); err != nil {
			for _, j := range committing {
				j.fail(err)
			}
		}
	}
	// 3. Objects renamed into the pool (once each), then linked into the
	// chroots; the new manifests written aside.
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		for _, o := range j.objs {
			if err := o.commit(); err != nil {
				j.fail(err)
				break
			}
		}
	}
	p.parallel(len(jobs), func(i int) {
		j := jobs[i]
		if !j.writing() {
			return
		}
		if err := p.linkJob(j); err != nil {
			j.fail(err)
			return
		}
		p.opts.Hook(StepLinked, j.name)
		removeStaleTemps(j.hostDir)
		j.m.PublishedAt = p.opts.Now().UTC().Truncate(time.Millisecond)
		tmp, n, err := writeManifestTemp(j.hostDir, j.m)
		if err == nil {
			err = advanceMtime(j.hostDir, tmp, p.opts.Now())
		}
		if err != nil {
			j.fail(err)
			return
		}
		j.tmpManifest = tmp
		j.res.BytesWritten += n
		if hasObjects(j.m) {
			// The record's copy of what this manifest names: a hard link,
			// no bytes.
			e := histEntry{Version: j.m.Version, Format: j.m.Format, Objects: true}
			if err := p.saveCopy(j.name, e, tmp); err != nil {
				j.fail(fmt.Errorf("retention record: %w", err))
				return
			}
		}
		p.opts.Hook(StepManifestWritten, j.name)
	})
	p.syncJobs(jobs, "writing the new manifests", false)
	// 4. The switch: each manifest.json replaced by rename.
	for _, j := range jobs {
		if !j.writing() {
			continue
		}
		if err := os.Rename(j.tmpManifest, filepath.Join(j.hostDir, manifest.ManifestFile)); err != nil {
			j.fail(err)
			continue
		}
		j.tmpManifest = ""
		p.opts.Hook(StepLive, j.name)
	}
	p.syncJobs(jobs, "making the new manifests durable", false)
	// 5. Retention: what no manifest of the window names leaves the chroot.
	changed := false
	var changedMu sync.Mutex
	p.parallel(len(jobs), func(i int) {
		j := jobs[i]
		if j.res.Err != nil {
			return
		}
		if p.finish(j) {
			changedMu.Lock()
			changed = true
			changedMu.Unlock()
		}
		p.opts.Logger.Debug("published", "host", j.name, "version", j.res.Version, "status", j.res.Status,
			"copied", j.res.Copied, "linked", j.res.Linked, "shared", j.res.Shared, "removed", j.res.Removed)
	})
	// 6. The pool.
	for _, j := range committing {
		if j.res.Err != nil {
			p.keepPending(j.name) // its links may name nothing
		}
	}
	if changed || len(p.pool) > 0 || p.poolScan {
		p.discardPool()
		var candidates map[string]bool
		if !p.poolScan {
			candidates = p.removed
			for sum := range p.pool {
				candidates[sum] = true
			}
		}
		if _, err := p.collectPool(candidates); err != nil {
			p.poolFailed.Store(true)
			for _, j := range jobs {
				if j.res.Err == nil && j.res.Status == StatusPublished {
					j.res.Notes = append(j.res.Notes, err.Error())
					break
				}
			}
		}
		p.opts.Hook(StepCollected, "")
	}
	if err := p.settleMarker(); err != nil {
		for _, j := range jobs {
			if j.res.Err == nil {
				j.res.Notes = append(j.res.Notes, err.Error())
				break
			}
		}
	}
}

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

// objectPresent tells whether the chroot at hostDir holds the object sum
// as a regular file.
func objectPresent(hostDir, sum string) bool {
	fi, err := os.Lstat(filepath.Join(hostDir, filepath.FromSlash(manifest.ObjectPath(sum))))
	return err == nil && fi.Mode().IsRegular()
}

// discardPool removes the temporary copies that were never renamed (their
// hosts failed, or the deploy was interrupted).
func (p *Publisher) discardPool() {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	for _, o := range p.pool {
		if o.tmp != "" {
			os.Remove(o.tmp)
			o.tmp = ""
		}
	}
}

// linkJob links the objects the host's chroot lacks, and renames the
// secrets into place.
func (p *Publisher) linkJob(j *hostJob) error {
	for i := len(j.stages) - 1; i >= 0; i-- {
		if err := j.stages[i].commit(); err != nil {
			return err
		}
	}
	j.stages = nil
	made := map[string]bool{}
	if len(j.objs) > 0 {
		if err := p.ensureDir(filepath.Join(j.hostDir, manifest.ObjectsDir), 0, 0, p.asRoot); err != nil {
			return err
		}
	}
	for _, o := range j.objs {
		dst := filepath.Join(j.hostDir, filepath.FromSlash(manifest.ObjectPath(o.sum)))
		created, err := p.linkObject(o, dst, made)
		if err != nil {
			return fmt.Errorf("linking object %s: %w", o.sum, err)
		}
		if !created {
			// Kept by retention from an earlier manifest.
			j.res.Shared--
			j.res.Linked++
		}
	}
	return nil
}

// finish updates the host's retention record and removes what left the
// window. It returns whether anything was removed or published.
func (p *Publisher) finish(j *hostJob) bool {
	now := p.opts.Now()
	ret := p.opts.Retention
	h := j.hist
	if h == nil {
		return false
	}
	published := j.res.Status == StatusPublished || j.res.Status == StatusUpdated
	if published {
		h.record(j.m, now)
		h.Live = nil
		if fi, err := os.Lstat(filepath.Join(j.hostDir, manifest.ManifestFile)); err == nil {
			head := *j.m
			head.Files = nil
			h.Live = &liveHead{ID: fileID(fi), Objects: hasObjects(j.m), Head: head}
		}
	}
	expiring := h.expiring(now, ret)
	pending := p.pending[j.name]
	if !published && !j.histChanged && !expiring && !pending {
		return false // unchanged: nothing written
	}
	note := func(format string, args ...any) { j.res.Notes = append(j.res.Notes, fmt.Sprintf(format, args...)) }
	// The record names the new manifest before anything is removed: a
	// crash from here on leaves a record that protects it.
	if err := p.saveHistory(h); err != nil {
		note("retention record: %v; nothing removed this time", err)
		return published
	}
	p.opts.Hook(StepRecorded, j.name)
	if h.recovering(now, ret) || !(j.res.Status == StatusPublished || expiring || pending) {
		return published
	}
	var expired []string
	for _, e := range h.Entries {
		if !e.inWindow(now, ret) && !e.Recovered {
			expired = append(expired, e.Version)
		}
	}
	keep, versions, format1, err := p.protected(j)
	if err != nil {
		note("retention: %v; nothing removed this time", err)
		return published
	}
	// Usually only what the expiring entries named can go, and only that
	// is looked at; objects/ is scanned whole when something unknown may
	// be there: a deploy that did not finish, a repaired record, or a
	// recovered entry leaving the window.
	full := pending || j.histChanged
	var candidates map[string]bool
	if !full {
		candidates = map[string]bool{}
		for _, e := range h.Entries {
			if e.inWindow(now, ret) {
				continue
			}
			if e.Recovered {
				full = true
				break
			}
			if !e.Objects {
				continue
			}
			sums, err := p.copyObjects(j.name, e)
			if err != nil {
				full = true
				break
			}
			for s := range sums {
				if !keep[s] {
					candidates[s] = true
				}
			}
		}
	}
	var n int
	if full {
		n, err = removeObjects(j.hostDir, keep, p.noteRemoved)
	} else {
		n, err = removeNamed(j.hostDir, candidates, p.noteRemoved)
	}
	j.res.Removed = n
	switch {
	case err != nil:
		p.keepPending(j.name)
		note("removing old objects: %v", err)
	case full:
		p.scanned(j.name)
	}
	if err := p.removeOldSecrets(j, versions); err != nil {
		note("removing old secrets: %v", err)
	}
	if !format1 {
		if err := p.removeAside(j.name, filepath.Join(j.hostDir, manifest.ConfigDir)); err != nil {
			note("removing the format-1 config/: %v", err)
		}
	}
	p.opts.Hook(StepRemoved, j.name)
	if h.expire(now, ret) {
		p.cleanCopies(h)
		if err := p.saveHistory(h); err != nil {
			note("retention record: %v", err)
		}
	}
	sort.Strings(expired)
	j.res.Pruned = expired
	return true
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

// syncJobs flushes the file systems the writing jobs live on (one
// syncfs(2) per file system, the pool's too when pool); a job whose file
// system failed to flush fails, with nothing of it live yet or, after the
// manifest rename, with its new manifest live but maybe not durable.
func (p *Publisher) syncJobs(jobs []*hostJob, what string, pool bool) {
	byDev := map[uint64][]*hostJob{}
	dirs := map[uint64]string{}
	if pool {
		var st syscall.Stat_t
		if err := syscall.Stat(p.root, &st); err == nil {
			dirs[uint64(st.Dev)] = p.root
		}
	}
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
	for dev, d := range dirs {
		if err := syncFS(d); err != nil {
			for _, j := range jobs {
				if j.writing() && (pool || containsJob(byDev[dev], j)) {
					j.fail(fmt.Errorf("%s: syncfs: %w", what, err))
				}
			}
		}
	}
}

func containsJob(js []*hostJob, j *hostJob) bool {
	for _, x := range js {
		if x == j {
			return true
		}
	}
	return false
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

func isDir(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.IsDir()
}

// readManifestHead returns the host's current manifest without its files
// (nil when there is none), and its bytes for decoding them when needed
// (nil when it names no file).
func readManifestHead(hostDir, host string) (*manifest.Manifest, manifestFiles, error) {
	data, err := readCapped(filepath.Join(hostDir, manifest.ManifestFile), manifest.MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	var head struct {
		manifest.Manifest
		// Shadows Manifest.Files: kept raw, decoded only when needed.
		Files json.RawMessage `json:"files"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, nil, fmt.Errorf("manifest: invalid JSON: %w", err)
	}
	m := &head.Manifest
	if err := m.Validate(); err != nil {
		return nil, nil, err
	}
	if m.Host != host {
		return nil, nil, fmt.Errorf("it names host %q", m.Host)
	}
	raw := bytes.TrimSpace(head.Files)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) || bytes.Equal(raw, []byte("[]")) {
		return m, nil, nil
	}
	return m, manifestFiles(data), nil
}

// manifestFiles is a whole manifest whose files were not decoded yet;
// ranging over it decodes and validates them (and yields nothing when
// that fails: the chroot then gets everything linked anew).
type manifestFiles []byte

func (mf manifestFiles) all() []manifest.File {
	m, err := manifest.Parse(mf)
	if err != nil {
		return nil
	}
	return m.Files
}

// ensureLayout creates or repairs the host's directories, writing nothing
// when they are already right: <host> and objects/ owned by root (when
// root) and 0755, reports/ owned by the host's user.
func (p *Publisher) ensureLayout(hostDir string, acct *account) error {
	if err := p.ensureDir(hostDir, 0, 0, p.asRoot); err != nil {
		return err
	}
	if obj := filepath.Join(hostDir, manifest.ObjectsDir); exists(obj) {
		if err := p.ensureDir(obj, 0, 0, p.asRoot); err != nil {
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
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
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

// ErrChanged is returned (wrapped) when a file changed between hashing and
// copying: its manifest line would lie.
var ErrChanged = errors.New("changed while being published; run bento deploy again")

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
