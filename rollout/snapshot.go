package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/status"
)

// snapshotTree copies what ships of src (as publish reads it) into dst,
// a fresh directory, and checks that dst, read as a plain tree, is the
// same version: later waves are then published from dst, whatever the
// working tree holds by then.
func snapshotTree(ctx context.Context, src publish.Source, root, dst string) error {
	tree, err := publish.ReadTree(ctx, src, publish.TreeOptions{Exclude: []string{root}})
	if err != nil {
		return err
	}
	for _, e := range tree.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := copyFile(e.Src, filepath.Join(dst, filepath.FromSlash(e.Path)), e.Mode, e.SHA256); err != nil {
			return err
		}
	}
	return checkSnapshot(ctx, dst, publish.Version(tree.Manifest(), nil))
}

// snapshotManifest copies the files manifest m names out of the chroot
// hostDir (its objects/, or config/<version>/ for format 1) into dst.
func snapshotManifest(ctx context.Context, m *manifest.Manifest, hostDir, dst string) error {
	for _, f := range m.Files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := copyFile(filepath.Join(hostDir, filepath.FromSlash(m.RemotePath(f))), filepath.Join(dst, filepath.FromSlash(f.Path)), f.Mode, f.SHA256); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	return checkSnapshot(ctx, dst, publish.Version(m.Files, nil))
}

// SourceOf is the publish source of a snapshot directory.
func SourceOf(dir string) publish.Source {
	return publish.Source{Root: dir, Boundary: dir, Plain: true}
}

func checkSnapshot(ctx context.Context, dst, want string) error {
	got, err := publish.ReadTree(ctx, SourceOf(dst), publish.TreeOptions{})
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", dst, err)
	}
	if v := publish.Version(got.Manifest(), nil); v != want {
		return fmt.Errorf("snapshot %s is version %s, not %s: a file name the plain tree reads differently (report this)", dst, v, want)
	}
	return nil
}

// syncFS makes everything written under dir durable (one syncfs(2) for a
// whole snapshot instead of an fsync per file and directory): the record
// that names a snapshot is written only after it.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("snapshot %s: syncfs: %w", dir, err)
	}
	return nil
}

// copyFile copies src to dst (which must not exist), checking its sha256:
// a snapshot must be exactly what was published. No symlink is followed
// at src's last component (publish resolved links already).
func copyFile(src, dst string, mode uint32, sum string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("snapshot: %s is not a regular file", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	perm := fs.FileMode(0o644)
	if mode&0o111 != 0 {
		perm = 0o755
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", dst, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("snapshot: %s changed while it was copied (sha256 %s, want %s): start the rollout again", src, got, sum)
	}
	return os.Chmod(dst, perm)
}

// liveManifest reads the manifest a host's chroot serves; nil when none.
func liveManifest(root, host string) (*manifest.Manifest, error) {
	r, err := status.OpenChroot(root, host)
	var ue *status.UsageError
	if errors.As(err, &ue) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := readRoot(r, manifest.ManifestFile, manifest.MaxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return manifest.Parse(data)
}

// readRoot reads name below r: a regular file of at most limit bytes,
// never blocking on a FIFO.
func readRoot(r *os.Root, name string, limit int64) ([]byte, error) {
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return statefile.ReadRegular(f, name, limit)
}
