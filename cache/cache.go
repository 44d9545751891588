// Package cache keeps the fleet's binary cache on the server. NARs are
// compressed and signed once for the whole fleet into a pool outside every
// chroot (nix copy --to file://…); each host's chroot then gets a cache
// directory of hard links to exactly the narinfo and NAR files of its own
// closures. Fifty hosts sharing most of a closure cost about one closure of
// disk, and a host that can read only its chroot cannot learn which paths
// another host has.
package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/bento-nix/bento/cache/narinfo"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/flock"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// tmpPrefix marks links being made; a crash may leave some behind and the
// next LinkHost removes them.
const tmpPrefix = ".bento-tmp-"

// DefaultCompression is what NARs are compressed with: much faster than
// Nix's default xz to make and to unpack on a small client, for slightly
// larger files.
const DefaultCompression = "zstd"

// Pool is the fleet-wide cache that host caches link into.
type Pool struct {
	// Dir is outside every chroot (e.g. <stateDir>/cache-pool) and on the
	// same filesystem as the chroot root: host caches are hard links.
	Dir string
	Nix *nix.Runner
	// SecretKeyFile signs every narinfo (bento keygen makes one).
	SecretKeyFile string
	// Compression of new NARs; DefaultCompression when empty.
	Compression string
	// Log receives one line per pool change; nil discards.
	Log *slog.Logger
}

// Stats describes one host's cache after LinkHost.
type Stats struct {
	// Paths is the number of store paths the host's cache serves.
	Paths int `json:"paths"`
	// Bytes is the size of its NAR files (shared with the pool on disk).
	Bytes int64 `json:"bytes"`
	// Linked and Removed count the files this call added and removed.
	Linked  int `json:"linked"`
	Removed int `json:"removed"`
}

// PruneStats describes what Prune removed from the pool.
type PruneStats struct {
	// Kept is the number of store paths still in the pool.
	Kept int `json:"kept"`
	// Removed counts narinfo and NAR files removed, RemovedBytes their size.
	Removed      int   `json:"removed"`
	RemovedBytes int64 `json:"removedBytes"`
}

func (p *Pool) log() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// check validates the pool's settings and returns its absolute directory.
func (p *Pool) check() (string, error) {
	if p.Dir == "" {
		return "", errors.New("cache pool: no directory set")
	}
	dir, err := filepath.Abs(p.Dir)
	if err != nil {
		return "", fmt.Errorf("cache pool %s: %w", p.Dir, err)
	}
	// Nix reads both paths from a store URL, where these characters
	// would cut or change the URL.
	if strings.ContainsAny(dir, "?&#%= \t\n") {
		return "", fmt.Errorf("cache pool %s: the path must not contain ?, &, #, %%, = or spaces (Nix takes it as a URL); choose another directory", dir)
	}
	return dir, nil
}

// Add copies storePaths and their closures into the pool, compressed and
// signed, skipping what it already holds. Entries that are incomplete (NAR
// missing) or not signed by the current key are made again, so a damaged
// pool or a rotated key heals on the next deploy.
func (p *Pool) Add(ctx context.Context, storePaths []string) error {
	dir, err := p.check()
	if err != nil {
		return err
	}
	if len(storePaths) == 0 {
		return nil
	}
	keyFile, pub, err := p.signingKey()
	if err != nil {
		return err
	}
	if err := checkStorePaths(storePaths); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cache pool: %w", err)
	}
	unlock, err := lock(ctx, dir, false)
	if err != nil {
		return err
	}
	defer unlock()

	closure, err := p.localClosure(ctx, storePaths)
	if err != nil {
		return err
	}
	stale, err := p.dropStale(dir, closure, pub)
	if err != nil {
		return err
	}
	if err := p.copyIn(ctx, dir, keyFile, storePaths); err != nil {
		return err
	}
	p.log().Debug("cache pool: added", "closures", len(storePaths), "paths", len(closure), "remade", stale)
	return nil
}

// checkStorePaths refuses what is not a store path.
func checkStorePaths(storePaths []string) error {
	for _, sp := range storePaths {
		if _, err := narinfo.HashPart(sp); err != nil {
			return fmt.Errorf("cache pool: %w", err)
		}
	}
	return nil
}

// copyIn has nix copy storePaths and their closures into the pool dir,
// compressed and signed with keyFile.
func (p *Pool) copyIn(ctx context.Context, dir, keyFile string, storePaths []string) error {
	compression := p.Compression
	if compression == "" {
		compression = DefaultCompression
	}
	url := "file://" + dir + "?compression=" + compression + "&secret-key=" + keyFile
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--to", url}, storePaths...)
	if _, err := p.Nix.Run(ctx, nix.Cmd{Args: args}); err != nil {
		return fmt.Errorf("cache pool: copying %d closures: %w", len(storePaths), err)
	}
	return nil
}

// signingKey is the absolute path of the secret key, in a form Nix takes
// inside a store URL, and its public half.
func (p *Pool) signingKey() (string, narinfo.PublicKey, error) {
	var pub narinfo.PublicKey
	if p.SecretKeyFile == "" {
		return "", pub, errors.New("cache pool: no signing key set: create one with bento keygen (clients only accept signed paths)")
	}
	keyFile, err := filepath.Abs(p.SecretKeyFile)
	if err != nil {
		return "", pub, fmt.Errorf("cache signing key: %w", err)
	}
	if strings.ContainsAny(keyFile, "?&#%= \t\n") {
		return "", pub, fmt.Errorf("cache signing key %s: the path must not contain ?, &, #, %%, = or spaces (Nix takes it as a URL); move the key", keyFile)
	}
	pub, err = p.PublicKey()
	return keyFile, pub, err
}

// dropStale removes the narinfo of every entry of closure that must be
// made again (see staleReason), so that nix copy makes it, and counts them.
func (p *Pool) dropStale(dir string, closure []string, pub narinfo.PublicKey) (int, error) {
	stale := 0
	for _, sp := range closure {
		h, _ := narinfo.HashPart(sp)
		reason := staleReason(dir, h, pub)
		if reason == "" {
			continue
		}
		p.log().Info("cache pool: making entry again", "path", sp, "reason", reason)
		if err := os.Remove(filepath.Join(dir, h+".narinfo")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return stale, fmt.Errorf("cache pool: %w", err)
		}
		stale++
	}
	return stale, nil
}

// staleReason says why the pool entry of hash h must be made again, or "".
func staleReason(dir, h string, key narinfo.PublicKey) string {
	data, err := os.ReadFile(filepath.Join(dir, h+".narinfo"))
	if errors.Is(err, fs.ErrNotExist) {
		return "" // nix copy adds it
	}
	if err != nil {
		return err.Error()
	}
	in, err := narinfo.Parse(data)
	if err != nil {
		return err.Error()
	}
	if err := checkNARURL(in.URL); err != nil {
		return err.Error()
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(in.URL))); err != nil {
		return "NAR missing: " + err.Error()
	}
	if err := in.Verify([]narinfo.PublicKey{key}); err != nil {
		return "signed with another key"
	}
	return ""
}

// localClosure lists the closure of paths in the local store.
func (p *Pool) localClosure(ctx context.Context, paths []string) ([]string, error) {
	args := append([]string{"--extra-experimental-features", "nix-command", "path-info", "--recursive"}, paths...)
	out, err := p.Nix.Run(ctx, nix.Cmd{Args: args})
	if err != nil {
		return nil, fmt.Errorf("cache pool: closure: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// entry is one store path of a cache: its narinfo and its NAR file.
type entry struct {
	hash string
	nar  string // relative to the cache root, e.g. nar/<filehash>.nar.zst
	size int64  // of the NAR file
}

// closure walks the pool's narinfos from toplevels through their
// references. With strict, a toplevel or reference missing from the pool
// is an error; otherwise it is skipped (pruning must not fail on damage).
func (p *Pool) closure(dir string, toplevels []string, strict bool) (map[string]entry, error) {
	out := make(map[string]entry)
	type item struct{ hash, from string }
	var queue []item
	for _, t := range toplevels {
		h, err := narinfo.HashPart(t)
		if err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
		queue = append(queue, item{h, ""})
	}
	for len(queue) > 0 {
		it := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if _, ok := out[it.hash]; ok {
			continue
		}
		e, refs, err := readEntry(dir, it.hash)
		if err != nil {
			if !strict {
				p.log().Debug("cache pool: skipping entry", "hash", it.hash, "err", err)
				continue
			}
			if it.from != "" {
				return nil, fmt.Errorf("cache pool %s: %s (a reference of %s): %w; run the deploy again to re-add it", dir, it.hash, it.from, err)
			}
			return nil, fmt.Errorf("cache pool %s: %w; add the closure to the pool first", dir, err)
		}
		out[it.hash] = e
		for _, r := range refs {
			h, _ := narinfo.HashPart(r) // validated by Parse
			if _, ok := out[h]; !ok {
				queue = append(queue, item{h, it.hash})
			}
		}
	}
	return out, nil
}

// readEntry reads the pool's narinfo for hash and checks its NAR is there.
func readEntry(dir, hash string) (entry, []string, error) {
	data, err := os.ReadFile(filepath.Join(dir, hash+".narinfo"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return entry{}, nil, fmt.Errorf("no narinfo for %s", hash)
		}
		return entry{}, nil, err
	}
	in, err := narinfo.Parse(data)
	if err != nil {
		return entry{}, nil, fmt.Errorf("%s.narinfo: %w", hash, err)
	}
	if h, _ := narinfo.HashPart(in.StorePath); h != hash {
		return entry{}, nil, fmt.Errorf("%s.narinfo names %s", hash, in.StorePath)
	}
	if err := checkNARURL(in.URL); err != nil {
		return entry{}, nil, fmt.Errorf("%s.narinfo: %w", hash, err)
	}
	fi, err := os.Stat(filepath.Join(dir, filepath.FromSlash(in.URL)))
	if err != nil {
		return entry{}, nil, fmt.Errorf("NAR of %s: %w", in.StorePath, err)
	}
	return entry{hash: hash, nar: in.URL, size: fi.Size()}, in.References, nil
}

// checkNARURL accepts only the NAR names nix copy writes, so nothing a
// narinfo says can make LinkHost link a file outside nar/.
func checkNARURL(u string) error {
	name, ok := strings.CutPrefix(u, narinfo.NARDir+"/")
	if !ok || !narinfo.ValidNARName(name) {
		return fmt.Errorf("unexpected NAR URL %q (want nar/<hash>.nar[.<compression>])", u)
	}
	return nil
}

// LinkHost makes hostDir/cache serve exactly the closures of toplevels:
// nix-cache-info, one narinfo per store path and its NAR, all hard links
// into the pool. Files no longer needed are removed. A reader never sees a
// narinfo whose NAR is missing: NARs are linked before narinfos, and
// narinfos removed before NARs; every file appears by an atomic rename.
func (p *Pool) LinkHost(ctx context.Context, hostDir string, toplevels []string) (Stats, error) {
	dir, err := p.check()
	if err != nil {
		return Stats{}, err
	}
	unlock, err := lock(ctx, dir, false)
	if err != nil {
		return Stats{}, err
	}
	defer unlock()

	want, err := p.closure(dir, toplevels, true)
	if err != nil {
		return Stats{}, err
	}
	dest := filepath.Join(hostDir, manifest.CacheDir)
	if err := os.MkdirAll(filepath.Join(dest, narinfo.NARDir), 0o755); err != nil {
		return Stats{}, fmt.Errorf("host cache: %w", err)
	}

	l := hostLinker{ctx: ctx, pool: dir, dest: dest}
	l.st.Paths = len(want)
	hashes := make([]string, 0, len(want))
	nars := make(map[string]int64, len(want)) // NAR file → size
	for h, e := range want {
		hashes = append(hashes, h)
		nars[e.nar] = e.size
	}
	sort.Strings(hashes)
	if err := l.linkAll(hashes, nars); err != nil {
		return l.st, err
	}
	if err := l.removeUnwanted(hashes, nars); err != nil {
		return l.st, err
	}
	p.log().Debug("host cache linked", "dir", dest, "paths", l.st.Paths, "linked", l.st.Linked, "removed", l.st.Removed)
	return l.st, nil
}

// hostLinker is one LinkHost at work: the pool it links from, the host
// cache it links into, and what it did so far.
type hostLinker struct {
	ctx        context.Context
	pool, dest string
	st         Stats
}

func (l *hostLinker) link(rel string) error {
	if err := l.ctx.Err(); err != nil {
		return err
	}
	made, err := linkFile(filepath.Join(l.pool, filepath.FromSlash(rel)), filepath.Join(l.dest, filepath.FromSlash(rel)))
	if err != nil {
		if errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("host cache %s: cannot hard-link from the pool %s: they are on different filesystems; put the cache pool on the filesystem of the chroot root", l.dest, l.pool)
		}
		return fmt.Errorf("host cache %s: %w", l.dest, err)
	}
	if made {
		l.st.Linked++
	}
	return nil
}

// linkAll links the NARs, synced, before any narinfo that points at them.
func (l *hostLinker) linkAll(hashes []string, nars map[string]int64) error {
	narList := make([]string, 0, len(nars))
	for n := range nars {
		narList = append(narList, n)
	}
	sort.Strings(narList)
	for _, n := range narList {
		if err := l.link(n); err != nil {
			return err
		}
		l.st.Bytes += nars[n]
	}
	if err := atomicfile.SyncDir(filepath.Join(l.dest, narinfo.NARDir)); err != nil {
		return err
	}
	if err := ensureCacheInfo(l.pool); err != nil {
		return err
	}
	if err := l.link(narinfo.CacheInfoFile); err != nil {
		return err
	}
	for _, h := range hashes {
		if err := l.link(h + ".narinfo"); err != nil {
			return err
		}
	}
	return atomicfile.SyncDir(l.dest)
}

// removeUnwanted removes the narinfos first, synced, so no narinfo ever
// points at a removed NAR.
func (l *hostLinker) removeUnwanted(hashes []string, nars map[string]int64) error {
	keep := map[string]bool{narinfo.CacheInfoFile: true, narinfo.NARDir: true}
	for _, h := range hashes {
		keep[h+".narinfo"] = true
	}
	n, err := removeExcept(l.dest, keep)
	l.st.Removed += n
	if err != nil {
		return err
	}
	if err := atomicfile.SyncDir(l.dest); err != nil {
		return err
	}
	keepNAR := make(map[string]bool, len(nars))
	for rel := range nars {
		keepNAR[strings.TrimPrefix(rel, narinfo.NARDir+"/")] = true
	}
	n, err = removeExcept(filepath.Join(l.dest, narinfo.NARDir), keepNAR)
	l.st.Removed += n
	return err
}

// ensureCacheInfo writes the pool's nix-cache-info if nix copy has not
// (a pool that never received a path still makes valid, empty host caches).
func ensureCacheInfo(dir string) error {
	p := filepath.Join(dir, narinfo.CacheInfoFile)
	if _, err := os.Stat(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.WriteFile(p, []byte("StoreDir: "+narinfo.StoreDir+"\n"), 0o644)
}

// linkFile makes dst a hard link to src unless it already is one. The
// link appears by rename, replacing whatever dst was, so a reader sees the
// old file or the new one, never none.
func linkFile(src, dst string) (bool, error) {
	sfi, err := os.Stat(src)
	if err != nil {
		return false, err
	}
	if dfi, err := os.Lstat(dst); err == nil && os.SameFile(sfi, dfi) {
		return false, nil
	}
	tmp := filepath.Join(filepath.Dir(dst), tmpPrefix+filepath.Base(dst))
	os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, nil
}

// removeExcept removes every entry of dir not named in keep (including
// temporary links a crash left) and returns how many it removed.
func removeExcept(dir string, keep map[string]bool) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("host cache: %w", err)
	}
	n := 0
	for _, e := range ents {
		if keep[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return n, fmt.Errorf("host cache: %w", err)
		}
		n++
	}
	return n, nil
}

// Prune removes from the pool every entry that neither the closures of
// keep need nor any host cache still links (a pool file with one link is
// in no chroot). So Prune(ctx, nil) after linking every host frees exactly
// what no host can fetch any more, whichever hosts this deploy touched; a
// host removed from the fleet keeps its entries until its chroot goes.
// Host caches are never touched: their links keep serving until their next
// LinkHost, so pruning cannot break a client mid-download.
func (p *Pool) Prune(ctx context.Context, keep []string) (PruneStats, error) {
	dir, err := p.check()
	if err != nil {
		return PruneStats{}, err
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return PruneStats{}, nil
	}
	unlock, err := lock(ctx, dir, true)
	if err != nil {
		return PruneStats{}, err
	}
	defer unlock()

	want, err := p.closure(dir, keep, false)
	if err != nil {
		return PruneStats{}, err
	}
	var st PruneStats
	keepNAR, err := pruneNarinfos(ctx, dir, want, &st)
	if err != nil {
		return st, err
	}
	if err := atomicfile.SyncDir(dir); err != nil {
		return st, err
	}
	if err := pruneNARs(ctx, dir, keepNAR, &st); err != nil {
		return st, err
	}
	p.log().Debug("cache pool pruned", "kept", st.Kept, "removed", st.Removed)
	return st, nil
}

// pruneNarinfos removes the pool's narinfos that want lacks and no host
// cache links, and returns the NARs the kept ones point at.
func pruneNarinfos(ctx context.Context, dir string, want map[string]entry, st *PruneStats) (map[string]bool, error) {
	keepNAR := map[string]bool{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cache pool: %w", err)
	}
	for _, e := range ents {
		// Nix's own directories (log/, realisations/) are left alone.
		name := e.Name()
		h, ok := strings.CutSuffix(name, ".narinfo")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if ent, ok := want[h]; ok {
			keepNAR[strings.TrimPrefix(ent.nar, narinfo.NARDir+"/")] = true
			st.Kept++
			continue
		}
		if linked(filepath.Join(dir, name)) {
			if ent, _, err := readEntry(dir, h); err == nil {
				keepNAR[strings.TrimPrefix(ent.nar, narinfo.NARDir+"/")] = true
			}
			st.Kept++
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("cache pool: %w", err)
		}
		st.Removed++
	}
	return keepNAR, nil
}

// pruneNARs removes the NARs no kept narinfo points at and no host links.
func pruneNARs(ctx context.Context, dir string, keepNAR map[string]bool, st *PruneStats) error {
	ents, err := os.ReadDir(filepath.Join(dir, narinfo.NARDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache pool: %w", err)
	}
	for _, e := range ents {
		file := filepath.Join(dir, narinfo.NARDir, e.Name())
		if keepNAR[e.Name()] || linked(file) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if fi, err := e.Info(); err == nil {
			st.RemovedBytes += fi.Size()
		}
		if err := os.Remove(file); err != nil {
			return fmt.Errorf("cache pool: %w", err)
		}
		st.Removed++
	}
	return nil
}

// linked reports whether a pool file has links besides the pool's own,
// that is, whether some host cache serves it. In doubt, it says yes.
func linked(file string) bool {
	fi, err := os.Lstat(file)
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return !ok || st.Nlink > 1
}

// lockFile serialises pool writers: Add and LinkHost share the pool,
// Prune needs it alone (another deploy's LinkHost must not lose entries
// between reading a narinfo and linking its NAR).
const lockFile = ".bento-lock"

func lock(ctx context.Context, dir string, exclusive bool) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache pool: %w", err)
	}
	l, err := flock.Acquire(ctx, filepath.Join(dir, lockFile), flock.Options{Shared: !exclusive, Perm: 0o600})
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("cache pool %s: waiting for another bento using it: %w", dir, ctx.Err())
	case err != nil:
		return nil, fmt.Errorf("cache pool: %w", err)
	}
	return func() { l.Release() }, nil
}
