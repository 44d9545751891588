package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
)

// Options configure Push and PullReports.
type Options struct {
	// Root is the primary's chroot root.
	Root string
	// Hosts are the hosts to copy; every chroot under Root that holds a
	// manifest.json when empty.
	Hosts []string
	// Signer is the key push logs in to the mirrors with.
	Signer ssh.Signer
	// KnownHosts pins each mirror's host key.
	KnownHosts *KnownHosts
	// Jobs is how many hosts are copied at once to one mirror (and files
	// of one host at once); 4 when 0.
	Jobs int
	// ConnectTimeout and OpTimeout are the transport's (20s and 60s when 0).
	ConnectTimeout time.Duration
	OpTimeout      time.Duration
	// Dial replaces the TCP dialer (the benchmark counts bytes with it).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Jobs <= 0 {
		o.Jobs = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// HostResult is what Push (or PullReports) did for one host on one mirror.
type HostResult struct {
	Mirror string
	Host   string
	// Uploaded files (Push) or downloaded files (PullReports), and their bytes.
	Files int
	Bytes int64
	// Skipped: files the mirror already had.
	Skipped int
	// Removed: files and directories the mirror had and the primary no
	// longer has.
	Removed int
	// Changed: the mirror's manifest.json was replaced (Push), or the
	// primary's report was (PullReports).
	Changed bool
	// Note says why nothing changed when that is worth saying (PullReports).
	Note string
	Err  error
}

// copied are the parts of a chroot a push copies, in upload order: what a
// manifest or a narinfo names goes before what names it. Removal runs in
// the reverse order. reports/ is the hosts' and never copied.
var copied = []string{manifest.ObjectsDir, manifest.CacheDir + "/" + narinfo.NARDir, manifest.CacheDir, manifest.SecretsDir}

// localFile is one file or directory of the primary's chroot.
type localFile struct {
	rel     string // slash-separated, relative to the chroot
	dir     bool
	mode    fs.FileMode
	size    int64
	modTime time.Time
	phase   int // index in copied, len(copied) for top-level files
}

// remoteFile is one entry of the mirror's chroot.
type remoteFile struct {
	dir     bool
	size    int64
	modTime time.Time
}

// maxRemoteEntries bounds the listing of a mirror's chroot.
const maxRemoteEntries = 4 << 20

// Push copies each host's chroot to every mirror: one SSH connection per
// mirror, Jobs hosts at once. The error is non-nil only when nothing could
// start (no host to push); per-host failures are in the results.
func Push(ctx context.Context, o Options, dests []Dest) ([]HostResult, error) {
	o.defaults()
	hosts, err := pushHosts(o)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var out []HostResult
	var wg sync.WaitGroup
	for _, d := range dests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := pushMirror(ctx, o, d, hosts)
			mu.Lock()
			out = append(out, res...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sortResults(out)
	return out, nil
}

func sortResults(r []HostResult) {
	sort.SliceStable(r, func(i, j int) bool {
		if r[i].Mirror != r[j].Mirror {
			return r[i].Mirror < r[j].Mirror
		}
		return r[i].Host < r[j].Host
	})
}

// pushHosts are the hosts to push: the named ones, or every chroot with a
// manifest.
func pushHosts(o Options) ([]string, error) {
	if len(o.Hosts) > 0 {
		for _, h := range o.Hosts {
			if err := fleet.ValidateName(h); err != nil {
				return nil, err
			}
		}
		return o.Hosts, nil
	}
	entries, err := os.ReadDir(o.Root)
	if err != nil {
		return nil, fmt.Errorf("chroot root: %w", err)
	}
	var hosts []string
	for _, e := range entries {
		if !e.IsDir() || fleet.ValidateName(e.Name()) != nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(o.Root, e.Name(), manifest.ManifestFile)); err == nil {
			hosts = append(hosts, e.Name())
		}
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("nothing published under %s: run bento deploy first (or pick the chroot root with --chroot-root)", o.Root)
	}
	return hosts, nil
}

// connect opens one connection to a mirror.
func connect(ctx context.Context, o Options, d Dest) (*transport.Conn, error) {
	if o.KnownHosts == nil {
		return nil, errors.New("no known_hosts: the mirror's host key must be pinned")
	}
	keys, err := o.KnownHosts.Keys(d.Addr())
	if err != nil {
		return nil, err
	}
	return transport.Dial(ctx, transport.Options{
		Addr: d.Addr(), User: d.User, Signer: o.Signer, HostKeys: keys,
		ConnectTimeout: o.ConnectTimeout, OpTimeout: o.OpTimeout,
		Attempts: 2, Backoff: backoff.Policy{Initial: time.Second, Max: 5 * time.Second},
		Dial: o.Dial, Logger: o.Logger,
	})
}

func pushMirror(ctx context.Context, o Options, d Dest, hosts []string) []HostResult {
	return eachHost(ctx, o, d, hosts, func(ctx context.Context, c *transport.Conn, r *HostResult) error {
		p := &hostPush{o: o, c: c, d: d, host: r.Host, res: r}
		return p.run(ctx)
	})
}

// eachHost connects once to mirror d and runs fn for every host, o.Jobs
// at a time, on that one connection. It returns a result a host, in the
// order of hosts: a failed connection fails them all, fn's error fails
// its own host only (the others go on).
func eachHost(ctx context.Context, o Options, d Dest, hosts []string, fn func(context.Context, *transport.Conn, *HostResult) error) []HostResult {
	out := make([]HostResult, len(hosts))
	for i, h := range hosts {
		out[i] = HostResult{Mirror: d.String(), Host: h}
	}
	c, err := connect(ctx, o, d)
	if err != nil {
		for i := range out {
			out[i].Err = fmt.Errorf("mirror %s: %w", d, err)
		}
		return out
	}
	defer c.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Jobs)
	for i := range out {
		g.Go(func() error {
			r := &out[i]
			if err := fn(gctx, c, r); err != nil {
				r.Err = fmt.Errorf("mirror %s: host %s: %w", d, r.Host, err)
			}
			return nil
		})
	}
	g.Wait()
	return out
}

// hostPush copies one host's chroot to one mirror.
type hostPush struct {
	o    Options
	c    *transport.Conn
	d    Dest
	host string
	res  *HostResult
	// dir is the host's chroot on the primary.
	dir string
	// uid and gid own the host's reports/ on the mirror (-1 when unknown):
	// the host's user there, who gets the secrets.
	uid, gid int

	mu sync.Mutex
}

func (p *hostPush) remote(rel string) string { return path.Join(p.d.Root, p.host, rel) }

func (p *hostPush) run(ctx context.Context) error {
	p.dir = filepath.Join(p.o.Root, p.host)
	src, err := readPrimary(p.dir)
	if err != nil {
		return err
	}
	if err := p.checkMirror(ctx); err != nil {
		return err
	}
	remote, err := p.walkRemote(ctx)
	if err != nil {
		return err
	}
	for phase := 0; phase <= len(copied); phase++ {
		if err := p.upload(ctx, src.local, remote, phase); err != nil {
			return err
		}
	}
	if err := p.pushManifest(ctx, src.manifest, src.modTime); err != nil {
		return err
	}
	return p.prune(ctx, src.have, remote)
}

// primary is what a push copies of a host's chroot on the primary.
type primary struct {
	// manifest is manifest.json's bytes, and modTime the time of the
	// file they were read from (not of whatever has the name by now).
	manifest []byte
	modTime  time.Time
	local    []localFile
	// have indexes local by rel.
	have map[string]localFile
}

// readPrimary reads the host's chroot on the primary, whose manifest must
// be format 2 and find every object it names.
func readPrimary(dir string) (*primary, error) {
	// The manifest first: everything it names was in place before it was
	// renamed there, and the publisher keeps it for the retention period.
	data, modTime, err := readLocal(filepath.Join(dir, manifest.ManifestFile), manifest.MaxSize)
	if err != nil {
		return nil, err
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("the primary's %s: %w", manifest.ManifestFile, err)
	}
	if m.Format < 2 {
		return nil, fmt.Errorf("the primary's %s is format %d: run bento deploy once (it migrates the chroot to format 2) before mirroring", manifest.ManifestFile, m.Format)
	}
	local, err := walkLocal(dir)
	if err != nil {
		return nil, err
	}
	src := &primary{manifest: data, modTime: modTime, local: local, have: map[string]localFile{}}
	for _, f := range local {
		src.have[f.rel] = f
	}
	if err := src.checkObjects(m); err != nil {
		return nil, err
	}
	return src, nil
}

// checkObjects refuses a chroot whose objects/ lacks a file m names.
func (src *primary) checkObjects(m *manifest.Manifest) error {
	for _, f := range m.Files {
		if lf, ok := src.have[manifest.ObjectPath(f.SHA256)]; !ok || lf.size != f.Size {
			return fmt.Errorf("the primary's objects/ lacks %s (%s), which its manifest names: a deploy is under way or the chroot is damaged; push again after it (bento deploy repairs it)", manifest.ObjectPath(f.SHA256), f.Path)
		}
	}
	return nil
}

// checkMirror makes sure the mirror is a bento server for this host and
// learns who the host's user is there.
func (p *hostPush) checkMirror(ctx context.Context) error {
	// The mirror must be a bento server for this host: its chroot exists,
	// with a reports/ owned by the host's user there, who gets the secrets.
	fi, err := p.c.Stat(ctx, p.remote(""))
	if err != nil || !fi.IsDir() {
		return fmt.Errorf("no chroot %s on the mirror (%v): configure the mirror as a bento server with the same hosts (services.bento-server.hosts)", p.remote(""), err)
	}
	rfi, err := p.c.Lstat(ctx, p.remote(manifest.ReportsDir))
	if err != nil || !rfi.IsDir() {
		return fmt.Errorf("no %s/ in the mirror's chroot %s (%v): configure the mirror as a bento server with the same hosts (services.bento-server.hosts creates it for the host's user)", manifest.ReportsDir, p.remote(""), err)
	}
	p.uid, p.gid = transport.Owner(rfi)
	return nil
}

// readLocal reads a file of the primary, capped.
func readLocal(file string, max int64) ([]byte, time.Time, error) {
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, time.Time{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, time.Time{}, err
	}
	data, err := statefile.ReadRegular(f, file, max)
	if err != nil {
		return nil, time.Time{}, err
	}
	return data, fi.ModTime(), nil
}

// phaseOf is the index in copied of the directory rel is in (the
// longest that matches), len(copied) for a top-level file.
func phaseOf(rel string) int {
	best, n := len(copied), -1
	for i, c := range copied {
		if (rel == c || strings.HasPrefix(rel, c+"/")) && len(c) > n {
			best, n = i, len(c)
		}
	}
	return best
}

// walkLocal lists what the push copies from a host's chroot: the copied
// directories and the top-level regular files but manifest.json (which
// goes last) and reports/. Names starting with a dot are a publisher's
// temporary files; symlinks are not followed (a publisher makes none).
func walkLocal(dir string) ([]localFile, error) {
	top, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	w := &localWalk{dir: dir}
	for _, e := range top {
		if err := w.top(e); err != nil {
			return nil, err
		}
	}
	return w.out, nil
}

// localWalk collects walkLocal's list.
type localWalk struct {
	dir string
	out []localFile
}

// skippedTop tells the top-level names of a chroot a push never copies.
func skippedTop(name string) bool {
	return strings.HasPrefix(name, ".") || name == manifest.ManifestFile || name == manifest.ReportsDir || name == manifest.ConfigDir
}

func (w *localWalk) add(rel string, dir bool, info fs.FileInfo, phase int) {
	w.out = append(w.out, localFile{rel: rel, dir: dir, mode: info.Mode().Perm(), size: info.Size(), modTime: info.ModTime(), phase: phase})
}

// top lists one top-level entry: a regular file, or a copied directory
// with everything in it.
func (w *localWalk) top(e fs.DirEntry) error {
	name := e.Name()
	switch {
	case skippedTop(name):
		return nil
	case e.Type().IsRegular():
		info, err := e.Info()
		if err != nil {
			return err
		}
		w.add(name, false, info, len(copied))
	case e.IsDir() && slices.Contains(copied, name):
		if err := filepath.WalkDir(filepath.Join(w.dir, name), w.visit); err != nil {
			return fmt.Errorf("reading the primary's chroot: %w", err)
		}
	}
	return nil
}

// visit is the WalkDir function of a copied directory.
func (w *localWalk) visit(p string, d fs.DirEntry, err error) error {
	if err != nil {
		return err
	}
	rel, _ := filepath.Rel(w.dir, p)
	rel = filepath.ToSlash(rel)
	if strings.HasPrefix(d.Name(), ".") {
		if d.IsDir() {
			return filepath.SkipDir
		}
		return nil
	}
	if !d.IsDir() && !d.Type().IsRegular() {
		return nil
	}
	info, err := d.Info()
	if err != nil {
		return err
	}
	w.add(rel, d.IsDir(), info, phaseOf(rel))
	return nil
}

// walkRemote lists the copied directories (and top-level files) of the
// host's chroot on the mirror.
func (p *hostPush) walkRemote(ctx context.Context) (map[string]remoteFile, error) {
	out := map[string]remoteFile{}
	top, err := p.c.ReadDir(ctx, p.remote(""))
	if err != nil {
		return nil, err
	}
	var queue []string
	for _, fi := range top {
		switch {
		case fi.Mode().IsRegular():
			out[fi.Name()] = remoteFile{size: fi.Size(), modTime: fi.ModTime()}
		case fi.IsDir() && slices.Contains(copied, fi.Name()):
			out[fi.Name()] = remoteFile{dir: true}
			queue = append(queue, fi.Name())
		}
	}
	for len(queue) > 0 {
		rel := queue[0]
		queue = queue[1:]
		subdirs, err := p.listRemote(ctx, rel, out)
		if err != nil {
			return nil, err
		}
		queue = append(queue, subdirs...)
	}
	return out, nil
}

// listRemote adds the entries of the mirror's directory rel to out,
// bounded, and returns its subdirectories.
func (p *hostPush) listRemote(ctx context.Context, rel string, out map[string]remoteFile) ([]string, error) {
	entries, err := p.c.ReadDir(ctx, p.remote(rel))
	if err != nil {
		return nil, err
	}
	var subdirs []string
	for _, fi := range entries {
		if len(out) >= maxRemoteEntries {
			return nil, fmt.Errorf("the mirror's chroot %s holds more than %d entries", p.remote(""), maxRemoteEntries)
		}
		r := path.Join(rel, fi.Name())
		switch {
		case fi.IsDir():
			out[r] = remoteFile{dir: true}
			subdirs = append(subdirs, r)
		default:
			out[r] = remoteFile{size: fi.Size(), modTime: fi.ModTime()}
		}
	}
	return subdirs, nil
}

// upToDate says whether the mirror already has f: objects are named by
// their content, so the same size means the same file; other files (the
// cache's, secrets, which a key rotation may change in place) must also
// have the same modification time, which a push copies.
func upToDate(f localFile, r remoteFile, ok bool) bool {
	if !ok || r.dir || r.size != f.size {
		return false
	}
	if f.phase == 0 {
		return true
	}
	return r.modTime.Unix() == f.modTime.Unix()
}

// upload copies the files of one phase the mirror lacks, Jobs at once,
// creating their directories first.
func (p *hostPush) upload(ctx context.Context, local []localFile, remote map[string]remoteFile, phase int) error {
	var files []localFile
	for _, f := range local {
		if f.phase != phase {
			continue
		}
		if f.dir {
			if err := p.makeDir(ctx, f, remote); err != nil {
				return err
			}
			continue
		}
		if r, ok := remote[f.rel]; upToDate(f, r, ok) {
			p.count(func(res *HostResult) { res.Skipped++ })
			continue
		}
		files = append(files, f)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(p.o.Jobs)
	for _, f := range files {
		g.Go(func() error { return p.put(gctx, f) })
	}
	return g.Wait()
}

// secret tells the paths under secrets/ (and secrets/ itself).
func secret(rel string) bool {
	return rel == manifest.SecretsDir || strings.HasPrefix(rel, manifest.SecretsDir+"/")
}

// makeDir creates a directory of the chroot on the mirror when it lacks
// it, with the primary's mode and owner.
func (p *hostPush) makeDir(ctx context.Context, f localFile, remote map[string]remoteFile) error {
	if r, ok := remote[f.rel]; !ok || !r.dir {
		if err := p.c.Mkdir(ctx, p.remote(f.rel)); err != nil {
			return err
		}
	}
	// Secrets' directories belong to the host's user (0500), the
	// others to root, as on the primary.
	if err := p.c.Chmod(ctx, p.remote(f.rel), f.mode); err != nil {
		return err
	}
	if secret(f.rel) && p.uid >= 0 && f.rel != manifest.SecretsDir {
		if err := p.c.Chown(ctx, p.remote(f.rel), p.uid, p.gid); err != nil {
			return err
		}
	}
	return nil
}

// put copies one file to the mirror, refusing one that changed meanwhile.
func (p *hostPush) put(ctx context.Context, f localFile) error {
	src, err := os.Open(filepath.Join(p.dir, filepath.FromSlash(f.rel)))
	if err != nil {
		return err
	}
	defer src.Close()
	po := transport.PutOptions{Mode: f.mode, ModTime: f.modTime}
	if secret(f.rel) && p.uid >= 0 {
		po.Chown, po.UID, po.GID = true, p.uid, p.gid
	}
	n, err := p.c.Put(ctx, p.remote(f.rel), src, po)
	if err != nil {
		return err
	}
	if n != f.size {
		return fmt.Errorf("%s changed while it was copied (%d bytes, then %d)", f.rel, f.size, n)
	}
	p.count(func(res *HostResult) { res.Files++; res.Bytes += n })
	return nil
}

func (p *hostPush) count(f func(*HostResult)) {
	p.mu.Lock()
	f(p.res)
	p.mu.Unlock()
}

// pushManifest replaces the mirror's manifest.json, by rename, when it
// differs from the primary's: the last step, once everything it names is
// there.
func (p *hostPush) pushManifest(ctx context.Context, data []byte, modTime time.Time) error {
	// The same size and time as the primary's (which a push copies) is
	// the same manifest, as for the other files; else the bytes decide.
	same := false
	if rfi, err := p.c.Stat(ctx, p.remote(manifest.ManifestFile)); err == nil && rfi.Mode().IsRegular() && rfi.Size() == int64(len(data)) {
		if rfi.ModTime().Unix() == modTime.Unix() {
			same = true
		} else if old, err := p.c.ReadFile(ctx, p.remote(manifest.ManifestFile), manifest.MaxSize); err == nil && bytes.Equal(old, data) {
			same = true
		}
	}
	if same {
		p.count(func(res *HostResult) { res.Skipped++ })
		return nil
	}
	// The primary's time, which the publisher moves by at least a second
	// per publication: the agents' watch sees a change on the mirror too.
	n, err := p.c.Put(ctx, p.remote(manifest.ManifestFile), bytes.NewReader(data), transport.PutOptions{Mode: 0o644, ModTime: modTime})
	if err != nil {
		return err
	}
	p.count(func(res *HostResult) { res.Files++; res.Bytes += n; res.Changed = true })
	return nil
}

// prune removes from the mirror what the primary no longer has (its
// retention decided), and the temporary files of a killed push: files in
// the reverse order of the upload (narinfos before their NARs), then
// directories, deepest first.
func (p *hostPush) prune(ctx context.Context, have map[string]localFile, remote map[string]remoteFile) error {
	list := goneFrom(have, remote)
	sort.Slice(list, func(i, j int) bool { return removedBefore(list[i], list[j]) })
	for _, g := range list {
		if err := p.remove(ctx, g); err != nil {
			return err
		}
		p.count(func(res *HostResult) { res.Removed++ })
	}
	return nil
}

// gone is an entry of the mirror's chroot the primary no longer has.
type gone struct {
	rel   string
	phase int
	depth int
	dir   bool
}

// goneFrom lists what the mirror has and the primary does not, but the
// mirror's own top-level files.
func goneFrom(have map[string]localFile, remote map[string]remoteFile) []gone {
	var list []gone
	for rel, r := range remote {
		if lf, ok := have[rel]; ok && lf.dir == r.dir {
			continue
		}
		if mirrorsOwn(rel, r) {
			continue
		}
		list = append(list, gone{rel, phaseOf(rel), strings.Count(rel, "/"), r.dir})
	}
	return list
}

// mirrorsOwn tells an entry the primary lacks that prune leaves alone.
func mirrorsOwn(rel string, r remoteFile) bool {
	// Top-level files the primary lacks: the mirror's own, not ours.
	return rel == manifest.ManifestFile || rel == manifest.ReportsDir || !strings.Contains(rel, "/") && !r.dir && !strings.HasPrefix(rel, transport.TempPrefix)
}

// removedBefore is prune's order: files before directories; files by
// phase, the last uploaded first; directories deepest first.
func removedBefore(a, b gone) bool {
	if a.dir != b.dir {
		return !a.dir
	}
	if a.dir {
		return a.depth > b.depth
	}
	if a.phase != b.phase {
		return a.phase > b.phase
	}
	return a.rel < b.rel
}

// remove removes one entry of the mirror (already gone is fine).
func (p *hostPush) remove(ctx context.Context, g gone) error {
	var err error
	if g.dir {
		err = p.c.RemoveDir(ctx, p.remote(g.rel))
	} else {
		err = p.c.Remove(ctx, p.remote(g.rel))
	}
	if err != nil && !transport.IsNotExist(err) {
		return fmt.Errorf("removing what the primary no longer has: %w", err)
	}
	return nil
}
