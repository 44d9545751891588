package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// Fetcher downloads one remote file (a path relative to the chroot root)
// into w, refusing more than max bytes. The agent's transport.Conn is one.
type Fetcher interface {
	Download(ctx context.Context, remote string, w io.Writer, max int64) (int64, error)
}

// RemotePath is where a published secret lies, relative to the chroot root.
func RemotePath(version, file string) string {
	return manifest.SecretsDir + "/" + version + "/" + file
}

// Store keeps the agent's copies of published secrets, one directory per
// version, in a directory only root can enter. An encrypted (.age) secret
// is kept encrypted: it is decrypted only into its installed path.
type Store struct {
	Dir string
}

const (
	stagingPrefix = ".staging-"
	filesList     = ".files.json"
)

// Files lists the secrets of a held version, as its manifest did.
func (s *Store) Files(version string) ([]manifest.File, error) {
	data, err := os.ReadFile(filepath.Join(s.Path(version), filesList))
	if err != nil {
		return nil, fmt.Errorf("secrets store: version %s is not held: %w", version, err)
	}
	var files []manifest.File
	if err := json.Unmarshal(data, &files); err != nil {
		return nil, fmt.Errorf("secrets store: version %s: %w", version, err)
	}
	return files, nil
}

// Path is the directory of a version's secrets.
func (s *Store) Path(version string) string { return filepath.Join(s.Dir, version) }

// Has reports whether a complete copy of version's secrets is held.
func (s *Store) Has(version string) bool {
	fi, err := os.Lstat(s.Path(version))
	return err == nil && fi.IsDir()
}

// Stage makes a complete, verified copy of m's secrets at Path(m.Version):
// each file is copied from a version already held when its hash matches,
// else downloaded from secrets/<version>/, checked against its size and
// sha256, and synced; the directory appears under its name only when
// complete. It returns how many bytes it downloaded.
func (s *Store) Stage(ctx context.Context, m *manifest.Manifest, f Fetcher) (int64, error) {
	if s.Has(m.Version) {
		return 0, nil
	}
	if err := s.prepare(); err != nil {
		return 0, err
	}
	held := s.index()
	staging, err := os.MkdirTemp(s.Dir, stagingPrefix+m.Version+"-")
	if err != nil {
		return 0, fmt.Errorf("secrets store: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(staging)
		}
	}()
	var total int64
	for _, file := range m.Secrets {
		if err := ValidateName(Name(file.Path)); err != nil {
			return total, fmt.Errorf("manifest: %w", err)
		}
		n, err := stageFile(ctx, filepath.Join(staging, file.Path), file, held[file.SHA256], RemotePath(m.Version, file.Path), f)
		total += n
		if err != nil {
			return total, fmt.Errorf("fetch secret %s: %w", file.Path, err)
		}
	}
	if err := s.seal(staging, m); err != nil {
		return total, err
	}
	ok = true
	if err := atomicfile.SyncDir(s.Dir); err != nil {
		return total, fmt.Errorf("secrets store: %w", err)
	}
	return total, nil
}

// prepare makes the store directory private (it may predate this bento or
// have been made by hand) and clears what a killed Stage left.
func (s *Store) prepare() error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("secrets store: %w", err)
	}
	if err := os.Chmod(s.Dir, 0o700); err != nil {
		return fmt.Errorf("secrets store: %w", err)
	}
	return s.clean()
}

// stageFile copies file into dst from held (a copy already in the store
// with its hash) when there is one and it verifies, else downloads it
// from remote. It returns the bytes downloaded.
func stageFile(ctx context.Context, dst string, file manifest.File, held, remote string, f Fetcher) (int64, error) {
	if held != "" {
		if err := copyVerified(ctx, dst, file, func(w io.Writer) (int64, error) {
			in, err := os.Open(held)
			if err != nil {
				return 0, err
			}
			defer in.Close()
			return io.Copy(w, io.LimitReader(in, file.Size+1))
		}); err == nil {
			return 0, nil
		}
	}
	var n int64
	err := copyVerified(ctx, dst, file, func(w io.Writer) (int64, error) {
		var err error
		n, err = f.Download(ctx, remote, w, file.Size)
		return n, err
	})
	return n, err
}

// seal writes the staged version's file list, syncs it and renames it
// into place: the version exists under its name only when complete.
func (s *Store) seal(staging string, m *manifest.Manifest) error {
	// The list lets a later tick install the version again (after a
	// reboot emptied /run) without reading the manifest's long tail, and
	// tells "no secrets" from "not held".
	list, err := json.Marshal(m.Secrets)
	if err == nil {
		err = atomicfile.Create(filepath.Join(staging, filesList), list, 0o600)
	}
	if err == nil {
		err = atomicfile.SyncDir(staging)
	}
	if err == nil {
		err = os.Rename(staging, s.Path(m.Version))
	}
	if err != nil {
		return fmt.Errorf("secrets store: %w", err)
	}
	return nil
}

// copyVerified writes what fill produces into a new file dst (0600) and
// keeps it only when its size and sha256 are file's.
func copyVerified(ctx context.Context, dst string, file manifest.File, fill func(io.Writer) (int64, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := atomicfile.CopyVerified(dst, atomicfile.Verified{
		Content: atomicfile.Content{Size: file.Size, SHA256: file.SHA256},
		Perm:    0o600,
		Secret:  true,
	}, fill)
	var mismatch *atomicfile.MismatchError
	if errors.As(err, &mismatch) {
		return fmt.Errorf("%w: refusing the file (republished during the download? the next tick retries)", err)
	}
	return err
}

// index maps the hash of every held secret file to its path, so a secret
// unchanged across versions is never downloaded twice.
func (s *Store) index() map[string]string {
	idx := map[string]string{}
	versions, _ := os.ReadDir(s.Dir)
	for _, v := range versions {
		if !v.IsDir() || strings.HasPrefix(v.Name(), ".") {
			continue
		}
		files, _ := os.ReadDir(filepath.Join(s.Dir, v.Name()))
		for _, f := range files {
			p := filepath.Join(s.Dir, v.Name(), f.Name())
			if !f.Type().IsRegular() || strings.HasPrefix(f.Name(), ".") {
				continue
			}
			if _, sum, err := hashFile(p); err == nil {
				idx[sum] = p
			}
		}
	}
	return idx
}

// clean removes staging directories an interrupted tick left.
func (s *Store) clean() error {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return fmt.Errorf("secrets store: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stagingPrefix) {
			if err := os.RemoveAll(filepath.Join(s.Dir, e.Name())); err != nil {
				return fmt.Errorf("secrets store: removing leftover %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// Prune removes every held version but the ones in keep.
func (s *Store) Prune(keep ...string) error {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("secrets store: %w", err)
	}
	kept := map[string]bool{}
	for _, k := range keep {
		kept[k] = true
	}
	var errs []error
	for _, e := range entries {
		if kept[e.Name()] || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.Dir, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("secrets store: %w", err)
	}
	return nil
}
