// Package tree keeps the agent's local copies of published flake trees.
//
// Two directories work together:
//
//	<objects>/<aa>/<rest>       a local object store: one read-only file per
//	                            distinct content, named by its sha256
//	<trees>/<version>/          the tree Nix evaluates, materialised from the
//	                            store (hard links, or copies)
//	<trees>/.manifest-<version>.json   the manifest that tree was built from
//
// Every object is verified (size and sha256) on arrival: it is downloaded
// to a temporary file, checked, fsynced and renamed into place, so a name
// in the store always holds the content it names; and it is hashed again
// before a tree is made from it, so a file damaged on disk is fetched
// again instead of trusted by its name. What was verified stays across
// attempts and publications: a download cut off, or one that outlives two
// publications, resumes with only what is still missing.
//
// A tree appears only complete: it is materialised in a staging directory,
// fsynced, and renamed to <trees>/<version>. An existing tree is never
// trusted by its name either: before reuse it is checked against its
// manifest (the exact set of files, their sizes, modes and hashes), and
// one that does not match is renamed aside and made again. Nothing is
// deleted in place: a directory is renamed to a ".trash-" name first, so
// a kill during removal leaves a name Clean finishes removing, never a
// partial tree under a version's name.
package tree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

const (
	stagingPrefix  = ".staging-"
	trashPrefix    = ".trash-"
	manifestPrefix = ".manifest-"
	manifestSuffix = ".json"
	tmpPrefix      = ".tmp-"
	currentLink    = "current"

	// objectPerm is every object's mode: read-only, so that nothing
	// writing through a tree's hard link changes it by accident (root
	// still can; the hash check before every use catches that).
	objectPerm = 0o444
	execPerm   = 0o555
)

// Fetcher downloads one remote file (a path relative to the chroot root)
// into w, refusing more than max bytes. transport.Conn is one.
type Fetcher interface {
	Download(ctx context.Context, remote string, w io.Writer, max int64) (int64, error)
}

// Store is the agent's object store and the trees made from it.
type Store struct {
	// Dir holds the trees (<stateDir>/config).
	Dir string
	// Objects holds the verified objects (<stateDir>/objects).
	Objects string
	// Jobs is how many objects are downloaded at once; 8 when zero.
	Jobs int
}

// Stats say what staging a version cost.
type Stats struct {
	// Files is how many files the manifest lists; Objects how many
	// distinct contents they have.
	Files   int
	Objects int
	// Downloaded objects crossed the network (Bytes in all); Held were
	// already in the store, verified; Imported were found, verified, in
	// an older local tree (a store started by an agent that kept no
	// objects).
	Downloaded int
	Held       int
	Imported   int
	Bytes      int64
	// Refetched counts objects found damaged in the store and fetched
	// again.
	Refetched int
	// Reused is true when the version's tree was already there and
	// matched its manifest.
	Reused bool
	// Discarded says why an existing tree of the version was not reused
	// ("" when there was none, or it was).
	Discarded string
}

// Path is the directory of a version's tree.
func (s *Store) Path(version string) string { return filepath.Join(s.Dir, version) }

func (s *Store) manifestPath(version string) string {
	return filepath.Join(s.Dir, manifestPrefix+version+manifestSuffix)
}

// objectPath is where the store keeps the content whose sha256 is sum.
func (s *Store) objectPath(sum string) string {
	return filepath.Join(s.Objects, filepath.FromSlash(manifest.ObjectPath(sum)[len(manifest.ObjectsDir)+1:]))
}

// Current returns the version the "current" link names ("" if none).
func (s *Store) Current() (string, error) {
	target, err := os.Readlink(filepath.Join(s.Dir, currentLink))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("local tree: %w", err)
	}
	return filepath.Base(target), nil
}

// Clean finishes what an interrupted tick left: staging and trash
// directories, temporary downloads, manifests of trees that are gone.
func (s *Store) Clean() error {
	for _, d := range []string{s.Dir, s.Objects} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("local tree: %w", err)
		}
	}
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	for _, e := range entries {
		if err := s.cleanEntry(e.Name()); err != nil {
			return err
		}
	}
	tmps, _ := filepath.Glob(filepath.Join(s.Objects, tmpPrefix+"*"))
	for _, p := range tmps {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("local tree: removing leftover %s: %w", p, err)
		}
	}
	return nil
}

// cleanEntry removes the entry name of Dir if an interrupted tick left
// it: a staging or trash directory, a current link's temporary name, a
// manifest whose tree is gone.
func (s *Store) cleanEntry(name string) error {
	switch {
	case strings.HasPrefix(name, stagingPrefix), strings.HasPrefix(name, trashPrefix), strings.HasPrefix(name, ".current-"):
		if err := os.RemoveAll(filepath.Join(s.Dir, name)); err != nil {
			return fmt.Errorf("local tree: removing leftover %s: %w", name, err)
		}
	case strings.HasPrefix(name, manifestPrefix) && strings.HasSuffix(name, manifestSuffix):
		v := strings.TrimSuffix(strings.TrimPrefix(name, manifestPrefix), manifestSuffix)
		if fi, err := os.Lstat(s.Path(v)); err != nil || !fi.IsDir() {
			os.Remove(filepath.Join(s.Dir, name))
		}
	}
	return nil
}

// Stage makes sure a complete tree of m is at Path(m.Version), fetching
// through f only the objects the store lacks. keep names the versions
// whose objects must survive this stage besides m's (the current tree
// and the applied version): every other object is removed first, so the
// store never holds more than the objects of these three publications.
func (s *Store) Stage(ctx context.Context, m *manifest.Manifest, f Fetcher, keep ...string) (Stats, error) {
	st := Stats{Files: len(m.Files)}
	objects, err := distinct(m)
	if err != nil {
		return st, err
	}
	st.Objects = len(objects)
	if err := s.Clean(); err != nil {
		return st, err
	}
	if reused, err := s.reuse(m, &st); reused || err != nil {
		return st, err
	}
	if err := s.GC(m, keep...); err != nil {
		return st, err
	}
	err = s.build(ctx, m, f, objects, keep, &st)
	return st, err
}

// reuse checks an existing tree of m.Version against m: one that matches
// is reused (true), one that does not is removed and st.Discarded says
// why. false and no error when there is none.
func (s *Store) reuse(m *manifest.Manifest, st *Stats) (bool, error) {
	if _, err := os.Lstat(s.Path(m.Version)); err != nil {
		return false, nil
	}
	verr := s.Verify(m)
	if verr == nil {
		st.Reused = true
		// Saved again: the tree may come from an agent that kept no
		// manifest beside it, and GC goes by this one.
		return true, s.saveManifest(m)
	}
	st.Discarded = verr.Error()
	return false, s.remove(m.Version)
}

// build makes m's tree in a staging directory from the objects, fetching
// those the store lacks, and renames it to Path(m.Version).
func (s *Store) build(ctx context.Context, m *manifest.Manifest, f Fetcher, objects []manifest.File, keep []string, st *Stats) error {
	// The staging directory comes first, so that a tick's progress is
	// visible from the moment it starts fetching.
	staging, err := os.MkdirTemp(s.Dir, stagingPrefix+m.Version+"-")
	if err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(staging)
		}
	}()

	missing := s.missing(objects, keep, st)
	n, bytes, err := s.fetch(ctx, m, f, missing)
	st.Downloaded, st.Bytes = n, bytes
	if err != nil {
		return err
	}

	if err := s.install(m, staging); err != nil {
		return err
	}
	ok = true
	return atomicfile.SyncDir(s.Dir)
}

// missing lists the objects neither held (verified) in the store nor
// imported from an older tree, counting each kind in st.
func (s *Store) missing(objects []manifest.File, keep []string, st *Stats) []manifest.File {
	var missing []manifest.File
	for _, o := range objects {
		held, damaged := s.held(o)
		if damaged {
			st.Refetched++
		}
		switch {
		case held:
			st.Held++
		case s.importFrom(o, keep):
			st.Imported++
		default:
			missing = append(missing, o)
		}
	}
	return missing
}

// install materialises m's files in staging, fsyncs them, saves m's
// manifest and only then renames staging to Path(m.Version).
func (s *Store) install(m *manifest.Manifest, staging string) error {
	if err := s.materialise(m, staging); err != nil {
		return err
	}
	if err := syncDirs(staging); err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	if err := s.saveManifest(m); err != nil {
		return err
	}
	if err := os.Rename(staging, s.Path(m.Version)); err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	return nil
}

// distinct lists one file per distinct content of m, refusing paths that
// escape the tree and a hash listed with two sizes.
func distinct(m *manifest.Manifest) ([]manifest.File, error) {
	seen := map[string]manifest.File{}
	var out []manifest.File
	for _, file := range m.Files {
		if err := manifest.ValidatePath(file.Path); err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		// The sum becomes a file name in the store: 64 lowercase hex
		// digits and nothing else (Parse checks it too).
		if b, err := hex.DecodeString(file.SHA256); err != nil || len(b) != sha256.Size || strings.ToLower(file.SHA256) != file.SHA256 {
			return nil, fmt.Errorf("manifest: %s: sha256 must be 64 lowercase hex digits", file.Path)
		}
		if prev, ok := seen[file.SHA256]; ok {
			if prev.Size != file.Size {
				return nil, fmt.Errorf("manifest: %s and %s have the same sha256 but sizes %d and %d", prev.Path, file.Path, prev.Size, file.Size)
			}
			continue
		}
		seen[file.SHA256] = file
		out = append(out, file)
	}
	return out, nil
}

// held reports whether the store has o's object with the right content;
// a damaged one (another size or hash) is removed, and damaged says so.
func (s *Store) held(o manifest.File) (held, damaged bool) {
	p := s.objectPath(o.SHA256)
	fi, err := os.Lstat(p)
	if err != nil {
		return false, false
	}
	if fi.Mode().IsRegular() && fi.Size() == o.Size && verifyFile(p, o) == nil {
		return true, false
	}
	os.RemoveAll(p)
	return false, true
}

// importFrom takes o's content from the file at the same path in an
// older local tree, when it has the right size and hash.
func (s *Store) importFrom(o manifest.File, versions []string) bool {
	for _, v := range versions {
		if !manifest.IsVersion(v) {
			continue
		}
		src := filepath.Join(s.Path(v), filepath.FromSlash(o.Path))
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != o.Size {
			continue
		}
		in, err := os.Open(src)
		if err != nil {
			continue
		}
		_, err = s.put(o, func(w io.Writer) (int64, error) { return io.Copy(w, in) })
		in.Close()
		if err == nil {
			return true
		}
	}
	return false
}

// fetch downloads the missing objects, Jobs at a time. One that fails
// does not stop the others: everything verified is kept for the next
// attempt. Only a cancelled ctx stops the lot.
func (s *Store) fetch(ctx context.Context, m *manifest.Manifest, f Fetcher, missing []manifest.File) (int, int64, error) {
	if len(missing) == 0 {
		return 0, 0, nil
	}
	if f == nil {
		return 0, 0, fmt.Errorf("local tree: %d objects to download and no connection", len(missing))
	}
	jobs := s.Jobs
	if jobs <= 0 {
		jobs = 8
	}
	var (
		bytes atomic.Int64
		done  atomic.Int64
		mu    sync.Mutex
		errs  []error
	)
	var g errgroup.Group
	g.SetLimit(jobs)
	for _, o := range missing {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if ctx.Err() != nil {
				return nil
			}
			remote := m.RemotePath(o)
			n, err := s.put(o, func(w io.Writer) (int64, error) { return f.Download(ctx, remote, w, o.Size) })
			bytes.Add(n)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("fetch %s (%s): %w", remote, o.Path, err))
				mu.Unlock()
				return nil
			}
			done.Add(1)
			return nil
		})
	}
	g.Wait()
	if err := ctx.Err(); err != nil {
		return int(done.Load()), bytes.Load(), err
	}
	return int(done.Load()), bytes.Load(), fetchError(errs, done.Load())
}

// fetchError is the error of a fetch where errs failed and done objects
// were verified: the first failure (by its text), and how many more.
func fetchError(errs []error, done int64) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	default:
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return fmt.Errorf("%w (and %d more objects failed; the %d verified are kept for the next attempt)", errs[0], len(errs)-1, done)
	}
}

// put writes an object into the store through write, which returns how
// many bytes it wrote: to a temporary file, checked against o's size and
// sha256, fsynced, made read-only and renamed to its name.
func (s *Store) put(o manifest.File, write func(io.Writer) (int64, error)) (int64, error) {
	dst := s.objectPath(o.SHA256)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, fmt.Errorf("local store: %w", err)
	}
	// The temporary name is in Objects itself, where the cleaner looks.
	tmp := filepath.Join(s.Objects, tmpPrefix+o.SHA256[:12]+"-"+strconv.FormatUint(rand.Uint64(), 36))
	n, err := atomicfile.CopyVerified(tmp, atomicfile.Verified{
		Content: content(o),
		Perm:    0o600,
		Finish:  func(f *os.File) error { return f.Chmod(objectPerm) },
	}, write)
	if err == nil {
		err = os.Rename(tmp, dst)
		if err != nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		return n, refusing(err)
	}
	return n, atomicfile.SyncDir(filepath.Dir(dst))
}

// materialise fills staging with m's files: hard links to the store's
// objects for read-only files, verified copies for executable ones (a
// link would share the object's mode) and when the store is on another
// filesystem. Every object was hashed by this stage (held, or put), so
// none reaches Nix on the strength of its name.
func (s *Store) materialise(m *manifest.Manifest, staging string) error {
	for _, file := range m.Files {
		dst := filepath.Join(staging, filepath.FromSlash(file.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("local tree: %s: %w", file.Path, err)
		}
		src := s.objectPath(file.SHA256)
		if file.Mode&0o111 == 0 {
			err := os.Link(src, dst)
			if err == nil {
				continue
			}
			// Another filesystem, a link count at its limit, or one
			// without hard links: a verified copy does.
			if !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EMLINK) && !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EOPNOTSUPP) {
				return fmt.Errorf("local tree: %s: %w", file.Path, err)
			}
		}
		if err := copyVerified(src, dst, file); err != nil {
			return fmt.Errorf("local tree: %s: %w", file.Path, err)
		}
	}
	return nil
}

// Verify checks the tree of m.Version against m: exactly m's files (no
// more, no fewer, nothing but directories and regular files), each with
// its size, executable bit and sha256. The error names the first
// difference.
func (s *Store) Verify(m *manifest.Manifest) error {
	root := s.Path(m.Version)
	want, dirs := listed(m)
	seen := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if !dirs[rel] {
				return fmt.Errorf("%s: a directory the manifest does not list", rel)
			}
			return nil
		}
		if err := verifyEntry(p, rel, d, want); err != nil {
			return err
		}
		seen++
		return nil
	})
	if err != nil {
		return fmt.Errorf("local tree %s: %w", m.Version, err)
	}
	if seen != len(want) {
		return missingFiles(m.Version, root, want, seen)
	}
	return nil
}

// listed is what a tree of m holds: its files by path, and the
// directories they are in ("." for the root).
func listed(m *manifest.Manifest) (map[string]manifest.File, map[string]bool) {
	want := make(map[string]manifest.File, len(m.Files))
	dirs := map[string]bool{".": true}
	for _, f := range m.Files {
		want[f.Path] = f
		for d := filepath.Dir(filepath.FromSlash(f.Path)); d != "."; d = filepath.Dir(d) {
			dirs[filepath.ToSlash(d)] = true
		}
	}
	return want, dirs
}

// verifyEntry checks the tree's non-directory entry d (at p, rel in the
// tree) against the file want lists there.
func verifyEntry(p, rel string, d fs.DirEntry, want map[string]manifest.File) error {
	f, ok := want[rel]
	if !ok {
		return fmt.Errorf("%s: a file the manifest does not list", rel)
	}
	if !d.Type().IsRegular() {
		return fmt.Errorf("%s: not a regular file", rel)
	}
	fi, err := d.Info()
	if err != nil {
		return err
	}
	if (fi.Mode().Perm()&0o111 != 0) != (f.Mode&0o111 != 0) {
		return fmt.Errorf("%s: mode %o, but the manifest says %o", rel, fi.Mode().Perm(), f.Mode)
	}
	if err := verifyFile(p, f); err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return nil
}

// missingFiles is the error of a tree under root that holds only seen of
// the files want lists: how many, and the first missing one.
func missingFiles(version, root string, want map[string]manifest.File, seen int) error {
	var absent []string
	for p := range want {
		if _, err := os.Lstat(filepath.Join(root, filepath.FromSlash(p))); err != nil {
			absent = append(absent, p)
		}
	}
	sort.Strings(absent)
	more := ""
	if len(absent) > 1 {
		more = fmt.Sprintf(" and %d more", len(absent)-1)
	}
	return fmt.Errorf("local tree %s: %d of %d files; missing %s%s", version, seen, len(want), strings.Join(absent[:min(1, len(absent))], ""), more)
}

func (s *Store) saveManifest(m *manifest.Manifest) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.manifestPath(m.Version), data, 0o644); err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	return nil
}

// loadManifest reads the manifest a local tree was made from (nil when
// there is none or it is unreadable: its objects are then not kept).
func (s *Store) loadManifest(version string) *manifest.Manifest {
	if !manifest.IsVersion(version) {
		return nil
	}
	f, err := os.Open(s.manifestPath(version))
	if err != nil {
		return nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, manifest.MaxSize+1))
	if err != nil {
		return nil
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil
	}
	return m
}

// GC removes every object that neither m nor the local manifest of a
// version in keep names, and every temporary download. This is the
// store's bound: what one attempt fetched survives until a stage of
// another publication that does not need it.
func (s *Store) GC(m *manifest.Manifest, keep ...string) error {
	named := s.named(m, keep)
	fans, err := os.ReadDir(s.Objects)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("local store: %w", err)
	}
	var errs []error
	for _, fan := range fans {
		errs = append(errs, s.gcFan(fan, named)...)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("local store: garbage collection: %w", err)
	}
	return nil
}

// named is the set of sums that m and the local manifests of the
// versions in keep name.
func (s *Store) named(m *manifest.Manifest, keep []string) map[string]bool {
	named := map[string]bool{}
	add := func(m *manifest.Manifest) {
		if m == nil {
			return
		}
		for _, f := range m.Files {
			named[f.SHA256] = true
		}
	}
	add(m)
	for _, v := range keep {
		add(s.loadManifest(v))
	}
	return named
}

// gcFan removes the objects of the fan-out directory fan that are not
// named, and the directory once empty; an entry of Objects that is not a
// fan-out directory goes whole.
func (s *Store) gcFan(fan os.DirEntry, named map[string]bool) []error {
	dir := filepath.Join(s.Objects, fan.Name())
	if !fan.IsDir() || len(fan.Name()) != 2 {
		if err := os.RemoveAll(dir); err != nil {
			return []error{err}
		}
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return []error{err}
	}
	var errs []error
	left := len(entries)
	for _, e := range entries {
		if named[fan.Name()+e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		left--
	}
	if left == 0 {
		os.Remove(dir)
	}
	return errs
}

func perm(mode uint32) os.FileMode {
	if mode&0o111 != 0 {
		return execPerm
	}
	return objectPerm
}

// copyVerified copies an object into a tree, hashing it on the way.
func copyVerified(src, dst string, file manifest.File) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = atomicfile.CopyVerified(dst, atomicfile.Verified{Content: content(file), Perm: perm(file.Mode)},
		func(w io.Writer) (int64, error) { return io.Copy(w, in) })
	return refusing(err)
}

// verifyFile hashes the file at p and compares it with file's size and sum.
func verifyFile(p string, file manifest.File) error {
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(in, file.Size+1))
	if err != nil {
		return err
	}
	return atomicfile.Verify(content(file), n, h.Sum(nil))
}

func content(f manifest.File) atomicfile.Content {
	return atomicfile.Content{Size: f.Size, SHA256: f.SHA256}
}

// refusing explains a content mismatch: the file is refused, and the
// likely cause heals by itself.
func refusing(err error) error {
	var mismatch *atomicfile.MismatchError
	if errors.As(err, &mismatch) {
		return fmt.Errorf("%w: refusing the file (was it republished during the download? the next tick retries)", err)
	}
	return err
}

// SetCurrent points the "current" link at version, atomically.
func (s *Store) SetCurrent(version string) error {
	link := filepath.Join(s.Dir, currentLink)
	tmp := filepath.Join(s.Dir, ".current-"+version)
	os.Remove(tmp)
	if err := os.Symlink(version, tmp); err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("local tree: %w", err)
	}
	return atomicfile.SyncDir(s.Dir)
}

// remove takes a version's tree away: renamed aside first (one atomic
// step, after which no partial tree carries the version's name), then
// deleted, then its manifest.
func (s *Store) remove(version string) error {
	trash, err := os.MkdirTemp(s.Dir, trashPrefix+version+"-")
	if err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	aside := filepath.Join(trash, version)
	if err := os.Rename(s.Path(version), aside); err != nil {
		os.Remove(trash)
		return fmt.Errorf("local tree: moving %s aside: %w", version, err)
	}
	if err := atomicfile.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	os.Remove(s.manifestPath(version))
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("local tree: removing %s: %w", trash, err)
	}
	return nil
}

// Prune removes every tree but the ones in keep.
func (s *Store) Prune(keep ...string) error {
	vs, err := s.Versions()
	if err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	kept := map[string]bool{}
	for _, k := range keep {
		kept[k] = true
	}
	var errs []error
	for _, v := range vs {
		if kept[v] {
			continue
		}
		if err := s.remove(v); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Empty removes every tree, the current link and every object: a host in
// fetch mode keeps nothing of the fleet's configuration.
func (s *Store) Empty() error {
	if err := s.Prune(); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(s.Dir, currentLink)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("local tree: %w", err)
	}
	if err := s.GC(nil); err != nil {
		return err
	}
	return s.Clean()
}

// Versions lists the trees held.
func (s *Store) Versions() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Copy makes a private, writable copy of version's tree in a staging
// directory (for self-update, which rewrites flake.lock), returning its path.
// The caller removes it; Clean removes it after a crash.
func (s *Store) Copy(version string) (string, error) {
	src := s.Path(version)
	dst, err := os.MkdirTemp(s.Dir, stagingPrefix+version+"-update-")
	if err != nil {
		return "", err
	}
	err = filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm()|0o200)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		os.RemoveAll(dst)
		return "", fmt.Errorf("local tree: copy of %s: %w", version, err)
	}
	return dst, nil
}

func syncDirs(root string) error {
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return atomicfile.SyncDir(p)
		}
		return nil
	})
}
