package publish

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// PoolDir is the fleet-wide object pool beside the chroots: every distinct
// content is written there once, then hard-linked into each chroot's
// objects/. It lies outside every chroot and only root may enter it
// (0700): a host reads an object through its own chroot's link only.
//
// An object is named by its sha256 alone and is always 0444: the same
// content published once executable and once not is one object, and the
// file's mode lives in the manifest (the agent applies it when it
// materialises the tree). That is what manifest.ObjectPath names.
const PoolDir = ".bento-objects"

// object is one content of the pool as this deploy sees it. The host that
// claims it first makes it ready (writes a temporary copy, or checks the
// pool's existing file); the others only link it, after the commit's sync.
type object struct {
	sum  string
	size int64
	// tmp is the new copy, renamed to final after the content is durable;
	// "" when final was already there and checked.
	tmp, final string
	err        error
	// renamed: final holds the content now (set by the commit).
	renamed bool
}

// objectFor returns the pool entry of a content, and whether the caller
// must make it ready.
func (p *Publisher) objectFor(sum string, size int64) (*object, bool) {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	if o, ok := p.pool[sum]; ok {
		return o, false
	}
	// The pool fans out by the first two digits whatever the chroots'
	// layout: it is one directory for the fleet.
	o := &object{sum: sum, size: size, final: filepath.Join(p.root, PoolDir, sum[:2], sum[2:])}
	p.pool[sum] = o
	return o, true
}

// ready makes o's content available: the pool's file when it is there
// with the right size and hash (a pool file is only ever renamed into
// place after its content was made durable, but it is checked anyway:
// never reuse without checking), otherwise a new temporary copy of src.
func (p *Publisher) ready(o *object, src string) (written int64, err error) {
	if err := p.ensurePoolDir(filepath.Dir(o.final)); err != nil {
		return 0, err
	}
	if fi, err := os.Lstat(o.final); err == nil && fi.Mode().IsRegular() && fi.Size() == o.size {
		if sum, err := fileSum(o.final); err == nil && sum == o.sum {
			return 0, nil
		}
	}
	if err := p.mark(nil); err != nil {
		return 0, err
	}
	tmp, err := p.copyObject(src, filepath.Dir(o.final), o.sum, o.size)
	if err != nil {
		return 0, err
	}
	o.tmp = tmp
	return o.size, nil
}

func (p *Publisher) ensurePoolDir(d string) error {
	p.poolMu.Lock()
	defer p.poolMu.Unlock()
	if p.poolDirs[d] {
		return nil
	}
	for _, x := range []string{filepath.Join(p.root, PoolDir), d} {
		if err := p.ensurePrivateDir(x); err != nil {
			return fmt.Errorf("object pool: %w", err)
		}
	}
	p.poolDirs[d] = true
	return nil
}

// copyObject copies src into a new temporary file in dir, read-only, and
// checks that what was copied has the hash the manifest announces. It is
// not synced: the commit syncs every new object with one syncfs.
func (p *Publisher) copyObject(src, dir, sum string, size int64) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	tmp := filepath.Join(dir, atomicfile.TempPrefix+sum[2:]+"-"+randomSuffix())
	v := atomicfile.Verified{Content: atomicfile.Content{Size: size, SHA256: sum}, Perm: 0o444, NoSync: true}
	if p.umaskClears {
		v.Finish = func(f *os.File) error { return f.Chmod(0o444) }
	}
	_, err = atomicfile.CopyVerified(tmp, v, func(w io.Writer) (int64, error) { return io.Copy(w, in) })
	var mismatch *atomicfile.MismatchError
	if errors.As(err, &mismatch) {
		return "", fmt.Errorf("%s %w", src, ErrChanged)
	}
	if err != nil {
		return "", err
	}
	return tmp, nil
}

// commitObject renames o's new copy into the pool (after the sync).
func (o *object) commit() error {
	if o.renamed || o.err != nil {
		return o.err
	}
	if o.tmp != "" {
		if err := os.Rename(o.tmp, o.final); err != nil {
			o.err = fmt.Errorf("object pool: %w", err)
			os.Remove(o.tmp)
			return o.err
		}
		o.tmp = ""
	}
	o.renamed = true
	return nil
}

// link puts o into the chroot's objects/ as dst. A file already there is
// kept when it is the pool's very file (the same inode), replaced
// otherwise (a leftover of another file system, or of hands). It returns
// whether something was created.
func (p *Publisher) linkObject(o *object, dst string, made map[string]bool) (bool, error) {
	dir := filepath.Dir(dst)
	if !made[dir] {
		if err := p.ensureDir(dir, 0, 0, false); err != nil {
			return false, err
		}
		made[dir] = true
	}
	err := os.Link(o.final, dst)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrExist):
		if o.alreadyAt(dst) {
			return false, nil
		}
	case !errors.Is(err, syscall.EXDEV) && !errors.Is(err, syscall.EMLINK):
		return false, err
	}
	if err := p.replaceObject(o, dst); err != nil {
		return false, err
	}
	return true, nil
}

// alreadyAt tells whether dst already is o: the pool's very file, or a
// read-only copy with o's content (from before the pool, or another file
// system).
func (o *object) alreadyAt(dst string) bool {
	a, err1 := os.Lstat(dst)
	b, err2 := os.Lstat(o.final)
	if err1 == nil && err2 == nil && os.SameFile(a, b) {
		return true
	}
	if err1 == nil && a.Mode().IsRegular() && a.Size() == o.size && a.Mode().Perm() == 0o444 {
		if sum, err := fileSum(dst); err == nil && sum == o.sum {
			return true
		}
	}
	return false
}

// replaceObject puts o at dst by rename, so the name never goes missing;
// across file systems (or past the link limit) as a durable copy.
func (p *Publisher) replaceObject(o *object, dst string) error {
	dir := filepath.Dir(dst)
	tmp := filepath.Join(dir, atomicfile.TempPrefix+filepath.Base(dst)+"-"+randomSuffix())
	if err := os.Link(o.final, tmp); err != nil {
		if tmp, err = p.copyObject(o.final, dir, o.sum, o.size); err != nil {
			return err
		}
		if err := syncFile(tmp); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// removeObjects removes from a chroot's objects/ every object that keep
// (by sha256) does not name, and the temporary files a killed deploy left.
// A file is removed with one unlink, which no crash can leave half done
// (unlike a directory tree, which is renamed aside first). It walks
// objects/ two levels deep, so it reads a fanned-out layout (objects/<aa>/
// <rest>) as well as a flat one. Returns how many went.
func removeObjects(hostDir string, keep map[string]bool, removed func(sum string)) (int, error) {
	s := &objectSweep{keep: keep, removed: removed}
	s.walk(filepath.Join(hostDir, manifest.ObjectsDir), "", 0)
	return s.n, errors.Join(s.errs...)
}

// objectSweep is one removeObjects: it counts what went and gathers why
// the rest could not go (one failure does not stop the others).
type objectSweep struct {
	keep    map[string]bool
	removed func(sum string)
	n       int
	errs    []error
}

// walk sweeps dir, at depth (0: objects/ itself) and whose objects' names
// start with prefix; it returns how many entries it left there.
func (s *objectSweep) walk(dir, prefix string, depth int) (left int) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.errs = append(s.errs, err)
		}
		return 1
	}
	for _, e := range entries {
		if !s.sweep(dir, prefix, depth, e) {
			left++
		}
	}
	return left
}

// sweepFan sweeps the subdirectory name of dir, a fan-out directory when
// dir is objects/ itself, and removes it once empty; it tells whether it
// went.
func (s *objectSweep) sweepFan(dir, name string, depth int) bool {
	if depth == 0 && isHexN(name, 2) && s.walk(filepath.Join(dir, name), name, 1) == 0 {
		os.Remove(filepath.Join(dir, name))
		return true
	}
	return false
}

// sweep removes the entry e of dir when it may go, and tells whether it went.
func (s *objectSweep) sweep(dir, prefix string, depth int, e fs.DirEntry) bool {
	name := e.Name()
	if e.IsDir() {
		return s.sweepFan(dir, name, depth)
	}
	sum := prefix + name
	if s.keep[sum] || !strings.HasPrefix(name, atomicfile.TempPrefix) && !isHexN(sum, 64) {
		return false // kept, or not ours: left alone
	}
	if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.errs = append(s.errs, err)
		return false
	}
	if isHexN(sum, 64) {
		s.removed(sum)
	}
	s.n++
	return true
}

// removeNamed removes the named objects from a chroot's objects/ (those
// that are there).
func removeNamed(hostDir string, sums map[string]bool, removed func(sum string)) (int, error) {
	n := 0
	var errs []error
	for sum := range sums {
		err := os.Remove(filepath.Join(hostDir, filepath.FromSlash(manifest.ObjectPath(sum))))
		switch {
		case err == nil:
			n++
			removed(sum)
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// collectPool drops the pool's objects that no chroot links any more
// (link count 1) and the temporary copies a killed deploy left: among
// candidates (by sha256), or everywhere when candidates is nil. It runs
// under the lock, after every chroot's removals.
func (p *Publisher) collectPool(candidates map[string]bool) (int, error) {
	var c poolCollector
	base := filepath.Join(p.root, PoolDir)
	if candidates != nil {
		c.collectNamed(base, candidates)
		return c.result()
	}
	fans, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("object pool: %w", err)
	}
	for _, fan := range fans {
		if !fan.IsDir() || !isHexN(fan.Name(), 2) {
			continue
		}
		c.collectFan(filepath.Join(base, fan.Name()))
	}
	return c.result()
}

// collectNamed removes the pool's (base) objects among sums that no
// chroot links.
func (c *poolCollector) collectNamed(base string, sums map[string]bool) {
	for sum := range sums {
		q := filepath.Join(base, sum[:2], sum[2:])
		if orphanObject(q) {
			c.remove(q)
		}
	}
}

// collectFan removes the objects of the pool's fan-out directory fd that
// no chroot links, and its temporary files.
func (c *poolCollector) collectFan(fd string) {
	entries, err := os.ReadDir(fd)
	if err != nil {
		c.errs = append(c.errs, err)
		return
	}
	for _, e := range entries {
		q := filepath.Join(fd, e.Name())
		if strings.HasPrefix(e.Name(), atomicfile.TempPrefix) || orphanObject(q) {
			c.remove(q)
		}
	}
}

// orphanObject tells whether the pool file q is a regular file that no
// chroot links (its only link is the pool's). In doubt, it says no.
func orphanObject(q string) bool {
	fi, err := os.Lstat(q)
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink <= 1
}

// poolCollector counts what collectPool removed and gathers why it could
// not remove the rest: one failure does not stop the others.
type poolCollector struct {
	n    int
	errs []error
}

func (c *poolCollector) remove(q string) {
	if err := os.Remove(q); err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.errs = append(c.errs, err)
		return
	}
	c.n++
}

func (c *poolCollector) result() (int, error) {
	if err := errors.Join(c.errs...); err != nil {
		return c.n, fmt.Errorf("object pool: %w", err)
	}
	return c.n, nil
}

func fileSum(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := newHasher()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return h.hex(), nil
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

func randomSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func isHexN(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
