// Package bundle writes and reads offline bundles. An offline bundle is
// a copy of one host's chroot as the host reads it: manifest.json
// (signed, byte for byte the live one), the objects and secrets it
// names, and its binary cache; the agent applies it with "bento agent
// apply-bundle" exactly as a tick over SFTP, and writes its report into
// the bundle's reports/, which "bento import-reports" brings to the
// server.
package bundle

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
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/secrets"
)

// ExportOptions allow what an export refuses by default.
type ExportOptions struct {
	// PlainSecrets copies secrets that are not age-encrypted too (they
	// are then in clear text on the medium).
	PlainSecrets bool
	// Unsigned exports a publication that is not signed.
	Unsigned bool
}

// Summary is what an export wrote.
type Summary struct {
	Dir, Version                 string // the bundle's directory, the publication's version
	Sequence                     uint64 // the publication's sequence
	Objects, Secrets, CacheFiles int    // the files copied, of each kind
	Bytes                        int64  // their size, the manifest's included
}

// maxCacheFiles bounds what one bundle's cache copy walks.
const maxCacheFiles = 1 << 20

// Export writes root/host's publication into out/host: into a
// temporary directory beside it first, synced, then renamed, so that an
// interrupted export leaves the previous bundle (or none), never half
// of one.
func Export(ctx context.Context, root, host, out string, opts ExportOptions) (Summary, error) {
	sum := Summary{Dir: filepath.Join(out, host)}
	if err := fleet.ValidateName(host); err != nil {
		return sum, err
	}
	chroot, err := os.OpenRoot(filepath.Join(root, host))
	if err != nil {
		return sum, fmt.Errorf("no chroot: %w (bento status lists the hosts; --chroot-root sets the root)", err)
	}
	defer chroot.Close()
	data, m, err := readExportManifest(chroot, host, opts)
	if err != nil {
		return sum, err
	}
	sum.Version, sum.Sequence = m.Version, m.Sequence
	tmp, err := makeBundleTemp(out, host)
	if err != nil {
		return sum, err
	}
	defer os.RemoveAll(tmp)
	if err := copyPublication(ctx, chroot, m, tmp, &sum); err != nil {
		return sum, err
	}
	// The manifest last, byte for byte: its signature covers it.
	if err := os.WriteFile(filepath.Join(tmp, manifest.ManifestFile), data, 0o644); err != nil {
		return sum, err
	}
	sum.Bytes += int64(len(data))
	if err := syncDir(tmp); err != nil {
		return sum, err
	}
	if err := replaceDir(tmp, sum.Dir); err != nil {
		return sum, err
	}
	// The rename itself, durable: a medium pulled after "bundle written"
	// must hold the bundle, not only its temporary name.
	return sum, atomicfile.SyncDir(out)
}

// readExportManifest reads the chroot's manifest and refuses what the
// bundle must not carry: another host's, an unsigned one, plain secrets
// (each unless opts allows it).
func readExportManifest(chroot *os.Root, host string, opts ExportOptions) ([]byte, *manifest.Manifest, error) {
	data, err := readRootFile(chroot, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w (deploy the host first)", manifest.ManifestFile, err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	if m.Host != host {
		return nil, nil, fmt.Errorf("its %s names host %q", manifest.ManifestFile, m.Host)
	}
	if m.Signature == nil && !opts.Unsigned {
		return nil, nil, errors.New("its publication is not signed: deploy with --publication-key (bento keygen --publication), or pass --allow-unsigned for hosts that pin no publication key")
	}
	if plain := plainSecrets(m); len(plain) > 0 && !opts.PlainSecrets {
		return nil, nil, fmt.Errorf("secrets %s are not age-encrypted: the bundle would carry them in clear text; encrypt them (docs/secrets.md) or pass --include-plain-secrets", strings.Join(plain, ", "))
	}
	return data, m, nil
}

// plainSecrets lists the paths of m's secrets that are not age-encrypted.
func plainSecrets(m *manifest.Manifest) []string {
	var plain []string
	for _, f := range m.Secrets {
		if !secrets.Encrypted(f.Path) {
			plain = append(plain, f.Path)
		}
	}
	return plain
}

// makeBundleTemp makes the temporary directory beside out/host that the
// bundle is written into.
func makeBundleTemp(out, host string) (string, error) {
	// What an export killed earlier left (its temporary directory, or
	// the previous bundle moved aside) goes first.
	stale, _ := filepath.Glob(filepath.Join(out, "."+host+".tmp-*"))
	for _, d := range stale {
		os.RemoveAll(d)
	}
	tmp, err := os.MkdirTemp(out, "."+host+".tmp-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	return tmp, nil
}

// copyPublication copies m's objects, secrets and binary cache from the
// chroot to tmp, counting them into sum.
func copyPublication(ctx context.Context, chroot *os.Root, m *manifest.Manifest, tmp string, sum *Summary) error {
	copied := map[string]bool{}
	for _, f := range m.Files {
		p := m.RemotePath(f)
		if copied[p] {
			continue
		}
		copied[p] = true
		if err := copyChecked(ctx, chroot, p, tmp, f); err != nil {
			return err
		}
		sum.Objects++
		sum.Bytes += f.Size
	}
	for _, f := range m.Secrets {
		if err := copyChecked(ctx, chroot, secrets.RemotePath(m.Version, f.Path), tmp, f); err != nil {
			return fmt.Errorf("secret %s: %w", f.Path, err)
		}
		sum.Secrets++
		sum.Bytes += f.Size
	}
	if m.Cache != nil {
		n, size, err := copyTree(ctx, chroot, m.Cache.Dir, tmp)
		if err != nil {
			return fmt.Errorf("binary cache: %w", err)
		}
		sum.CacheFiles, sum.Bytes = n, sum.Bytes+size
	}
	return nil
}

func readRootFile(r *os.Root, name string, max int64) ([]byte, error) {
	f, err := openRootRegular(r, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(data)) > max {
		err = fmt.Errorf("%s is over %d bytes", name, max)
	}
	return data, err
}

// openRootRegular opens name below r for reading, refusing anything but
// a regular file (O_NONBLOCK: a FIFO put there does not block the open).
func openRootRegular(r *os.Root, name string) (*os.File, error) {
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	return f, nil
}

// copyChecked copies the chroot file p to dst/p, checking the size and
// sha256 the manifest gives: a bundle never carries what the host would
// refuse.
func copyChecked(ctx context.Context, src *os.Root, p, dst string, f manifest.File) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	in, err := openRootRegular(src, p)
	if err != nil {
		return err
	}
	defer in.Close()
	target := filepath.Join(dst, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	n, sum, err := copyToNewFile(target, io.LimitReader(in, f.Size+1))
	if err != nil {
		return err
	}
	if n != f.Size || sum != f.SHA256 {
		return fmt.Errorf("%s does not have the content its manifest names (%d bytes, want %d, or another sha256): the chroot is damaged; deploy again", p, n, f.Size)
	}
	return nil
}

// copyToNewFile copies in to target, which must not exist yet, and
// returns the bytes copied and their sha256 in hex.
func copyToNewFile(target string, in io.Reader) (int64, string, error) {
	outf, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(outf, h), in)
	if cerr := outf.Close(); err == nil {
		err = cerr
	}
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// copyTree copies the chroot directory dir (its directories and regular
// files; anything else is refused) to dst/dir.
func copyTree(ctx context.Context, src *os.Root, dir, dst string) (files int, size int64, err error) {
	if err := manifest.ValidatePath(dir); err != nil {
		return 0, 0, err
	}
	err = fs.WalkDir(src.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		target := filepath.Join(dst, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s is not a regular file (%s)", p, d.Type())
		}
		if files++; files > maxCacheFiles {
			return fmt.Errorf("over %d files", maxCacheFiles)
		}
		in, err := src.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		outf, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			return err
		}
		n, err := io.Copy(outf, in)
		if cerr := outf.Close(); err == nil {
			err = cerr
		}
		size += n
		return err
	})
	return files, size, err
}

// syncDir makes everything written under dir durable: one syncfs for
// the file system instead of an fsync per file.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// replaceDir renames tmp to dir; an existing dir (an older bundle) is
// moved aside first and removed after.
func replaceDir(tmp, dir string) error {
	old := ""
	if _, err := os.Lstat(dir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		if old != "" {
			os.Rename(old, dir)
		}
		return err
	}
	if old != "" {
		return os.RemoveAll(old)
	}
	return nil
}
