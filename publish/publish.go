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
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/fleet"
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
	// SigningKey, when set, signs every manifest written (the fleet's
	// publication key, not the cache's: see sign.go in package manifest).
	SigningKey *manifest.SigningKey
	// NextPublicationKey, when set, is announced in every manifest (key
	// rotation: hosts pin it on applying one), name:base64.
	NextPublicationKey string
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
	Host string `json:"host"`
	// State is the host's outcome; JSON "state" as in every bento
	// document (it was "status" before issue 17).
	Status Status `json:"state"`
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
	if err := opts.check(); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	p := &Publisher{opts: opts.withDefaults(), root: root, asRoot: os.Geteuid() == 0, hashes: NewHashCache(), trees: map[Source]*treeCall{}, versions: map[*Tree]treeMemo{},
		pool: map[string]*object{}, poolDirs: map[string]bool{}, copies: map[string]map[string]bool{}, removed: map[string]bool{}}
	p.umaskClears = umask()&0o755 != 0
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

// check refuses the options Open cannot start from.
func (o Options) check() error {
	if o.Root == "" {
		return errors.New("no chroot root: pass --chroot-root or set BENTO_CHROOT_ROOT")
	}
	if o.Retention < 0 {
		return fmt.Errorf("retention %s is negative: pass a duration such as 1h", o.Retention)
	}
	return nil
}

// withDefaults fills in the options left zero.
func (o Options) withDefaults() Options {
	if o.Jobs <= 0 {
		o.Jobs = 2 * runtime.NumCPU()
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Hook == nil {
		o.Hook = func(Step, string) {}
	}
	return o
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
