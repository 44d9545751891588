// Package tree keeps the agent's local copies of published flake trees.
//
// Every version lives in its own directory, <dir>/<version>, which appears
// only once it is complete and verified: files are downloaded (or copied
// from an older local version when their hash matches) into a staging
// directory, every size and sha256 is checked, everything is fsynced, and
// the staging directory is renamed into place. A kill -9 at any moment
// leaves either no <dir>/<version> at all or a complete one; leftover
// staging directories are removed by the next Clean.
package tree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/bento-nix/bento/internal/atomicfile"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/manifest"
)

const (
	stagingPrefix = ".staging-"
	currentLink   = "current"
)

// Fetcher downloads one remote file (a path relative to the chroot root)
// into w, refusing more than max bytes. transport.Conn is one.
type Fetcher interface {
	Download(ctx context.Context, remote string, w io.Writer, max int64) (int64, error)
}

// Store is the directory holding the local trees.
type Store struct {
	Dir string
	// Jobs is how many files are downloaded at once; 8 when zero.
	Jobs int
}

// Stats say what staging a version cost.
type Stats struct {
	Files      int
	Downloaded int
	Reused     int
	Bytes      int64
}

// Path is the directory of a version.
func (s *Store) Path(version string) string { return filepath.Join(s.Dir, version) }

// Has reports whether a complete copy of version is held.
func (s *Store) Has(version string) bool {
	fi, err := os.Stat(s.Path(version))
	return err == nil && fi.IsDir()
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

// Clean removes staging directories left by an interrupted tick.
func (s *Store) Clean() error {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stagingPrefix) || strings.HasPrefix(e.Name(), ".current-") {
			if err := os.RemoveAll(filepath.Join(s.Dir, e.Name())); err != nil {
				return fmt.Errorf("local tree: removing leftover %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// Stage makes a complete, verified copy of m's tree at Path(m.Version).
// Files whose size and sha256 match a file at the same path in one of the
// reuse versions are copied locally; the others are downloaded from
// config/<version>/ through f. Nothing is downloaded when the version is
// already held.
func (s *Store) Stage(ctx context.Context, m *manifest.Manifest, f Fetcher, reuse ...string) (Stats, error) {
	st := Stats{Files: len(m.Files)}
	if s.Has(m.Version) {
		st.Reused = len(m.Files)
		return st, nil
	}
	if err := s.Clean(); err != nil {
		return st, err
	}
	staging, err := os.MkdirTemp(s.Dir, stagingPrefix+m.Version+"-")
	if err != nil {
		return st, fmt.Errorf("local tree: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(staging)
		}
	}()

	var toFetch []manifest.File
	for _, file := range m.Files {
		if err := manifest.ValidatePath(file.Path); err != nil {
			return st, fmt.Errorf("manifest: %w", err)
		}
		if err := os.MkdirAll(filepath.Join(staging, filepath.Dir(file.Path)), 0o755); err != nil {
			return st, fmt.Errorf("local tree: %s: %w", file.Path, err)
		}
		if s.reuse(file, staging, reuse) {
			st.Reused++
			continue
		}
		toFetch = append(toFetch, file)
	}

	jobs := s.Jobs
	if jobs <= 0 {
		jobs = 8
	}
	var bytes atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	for _, file := range toFetch {
		g.Go(func() error {
			n, err := download(gctx, f, m.Version, file, filepath.Join(staging, file.Path))
			bytes.Add(n)
			return err
		})
	}
	err = g.Wait()
	st.Downloaded = len(toFetch)
	st.Bytes = bytes.Load()
	if err != nil {
		return st, err
	}
	if err := syncDirs(staging); err != nil {
		return st, fmt.Errorf("local tree: %w", err)
	}
	if err := os.Rename(staging, s.Path(m.Version)); err != nil {
		return st, fmt.Errorf("local tree: %w", err)
	}
	ok = true
	return st, atomicfile.SyncDir(s.Dir)
}

// reuse copies file from an older version when the copy there has the
// same size and hash; it reports whether it did.
func (s *Store) reuse(file manifest.File, staging string, versions []string) bool {
	for _, v := range versions {
		if v == "" {
			continue
		}
		src := filepath.Join(s.Path(v), file.Path)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != file.Size {
			continue
		}
		if err := copyVerified(src, filepath.Join(staging, file.Path), file); err == nil {
			return true
		}
	}
	return false
}

func perm(mode uint32) os.FileMode {
	if mode&0o111 != 0 {
		return 0o755
	}
	return 0o644
}

// create opens a new file in the staging tree; O_EXCL and O_NOFOLLOW make
// sure nothing already there (a link planted by a bad manifest) is followed.
func create(dst string, mode uint32) (*os.File, error) {
	return os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm(mode))
}

func copyVerified(src, dst string, file manifest.File) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := create(dst, file.Mode)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), in)
	if err == nil {
		err = check(file, h, -1)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return err
}

func download(ctx context.Context, f Fetcher, version string, file manifest.File, dst string) (int64, error) {
	remote := manifest.ConfigPath(version) + "/" + file.Path
	out, err := create(dst, file.Mode)
	if err != nil {
		return 0, fmt.Errorf("local tree: %s: %w", file.Path, err)
	}
	h := sha256.New()
	n, err := f.Download(ctx, remote, io.MultiWriter(out, h), file.Size)
	if err == nil {
		err = check(file, h, n)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return n, fmt.Errorf("fetch %s: %w", remote, err)
	}
	return n, nil
}

func check(file manifest.File, h hash.Hash, n int64) error {
	if n >= 0 && n != file.Size {
		return fmt.Errorf("size %d, but the manifest says %d (was it republished during the download? the next tick retries)", n, file.Size)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if !strings.EqualFold(got, file.SHA256) {
		return fmt.Errorf("sha256 %s, but the manifest says %s: refusing the file", got, file.SHA256)
	}
	return nil
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

// Prune removes every version but the ones in keep.
func (s *Store) Prune(keep ...string) error {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return fmt.Errorf("local tree: %w", err)
	}
	kept := map[string]bool{currentLink: true}
	for _, k := range keep {
		kept[k] = true
	}
	var errs []error
	for _, e := range entries {
		if kept[e.Name()] || strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.Dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Versions lists the complete versions held.
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
