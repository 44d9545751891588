package secrets

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/gitcmd"
	"github.com/bento-nix/bento/manifest"
)

// PublishedMode is the mode of a secret in the chroot and in the manifest:
// only the host's SFTP user may read it.
const PublishedMode = 0o400

// publishedDirMode is the mode of <host>/secrets/<version>/.
const publishedDirMode = 0o500

// ResolveDir returns the secrets directory: flag (--secrets-dir or
// BENTO_SECRETS_DIR) when set, else secrets/ in the fleet's directory; ""
// when there is neither (a remote flake without --secrets-dir has no secrets).
func ResolveDir(flag, fleetDir string) (string, error) {
	if flag == "" && fleetDir == "" {
		return "", nil
	}
	d := flag
	if d == "" {
		d = filepath.Join(fleetDir, DirName)
	}
	abs, err := filepath.Abs(d)
	if err != nil {
		return "", fmt.Errorf("secrets directory %s: %w", d, err)
	}
	if flag != "" {
		fi, err := os.Stat(abs)
		if err != nil {
			return "", fmt.Errorf("secrets directory %s (--secrets-dir): %w", abs, err)
		}
		if !fi.IsDir() {
			return "", fmt.Errorf("secrets directory %s (--secrets-dir) is not a directory", abs)
		}
	}
	return abs, nil
}

// Collect lists the secrets of host, the files directly under dir/<host>/,
// sorted by name, each with PublishedMode, its size and sha256. A missing
// dir or host directory means no secrets. Files whose name starts with a
// dot (.gitkeep, editor files) are ignored; anything else that is not a
// regular file, or a symlink leading out of dir, is an error.
func Collect(dir, host string) ([]manifest.File, error) {
	if err := fleet.ValidateName(host); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, nil
	}
	hostDir := filepath.Join(dir, host)
	entries, err := os.ReadDir(hostDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secrets of %s: %w", host, err)
	}
	var files []manifest.File
	byName := map[string]string{}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") {
			continue
		}
		f, err := collectOne(dir, host, n, byName)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// collectOne lists the secret file n of host; byName maps the secret
// names seen so far to their file's name (a secret must not be there
// both plain and encrypted).
func collectOne(dir, host, n string, byName map[string]string) (manifest.File, error) {
	rel := filepath.Join(host, n)
	if err := ValidateName(Name(n)); err != nil {
		return manifest.File{}, fmt.Errorf("secret %s: %w", rel, err)
	}
	if other, ok := byName[Name(n)]; ok {
		return manifest.File{}, fmt.Errorf("secret %s: both %s and %s are there; keep one (the .age one is encrypted)", filepath.Join(host, Name(n)), other, n)
	}
	byName[Name(n)] = n
	src, err := source(dir, host, n)
	if err != nil {
		return manifest.File{}, err
	}
	size, sum, err := hashFile(src)
	if err != nil {
		return manifest.File{}, fmt.Errorf("secret %s: %w", rel, err)
	}
	return manifest.File{Path: n, Mode: PublishedMode, Size: size, SHA256: sum}, nil
}

// Exposed warns, one line each, about the plaintext secrets of host (as
// Collect listed them) whose source file under dir is readable by its group
// or by others: anyone of them can read the secret on this machine, before
// bento ever publishes it. Encrypted (.age) files are exempt: only the
// host's key opens them.
func Exposed(dir, host string, files []manifest.File) []string {
	var out []string
	for _, f := range files {
		if Encrypted(f.Path) {
			continue
		}
		src, err := source(dir, host, f.Path)
		if err != nil {
			continue // Collect or Write reports it
		}
		fi, err := os.Stat(src)
		if err != nil {
			continue
		}
		perm := fi.Mode().Perm()
		var who []string
		if perm&0o040 != 0 {
			who = append(who, "its group")
		}
		if perm&0o004 != 0 {
			who = append(who, "every user")
		}
		if len(who) == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("secret %s: %s is readable by %s (mode %04o): chmod 0600 %s (and the directories above it 0700)",
			filepath.Join(host, f.Path), src, strings.Join(who, " and "), perm, src))
	}
	return out
}

// source returns the regular file that dir/<host>/<name> stands for,
// following symlinks only while they stay inside dir.
func source(dir, host, name string) (string, error) {
	rel := filepath.Join(host, name)
	p := filepath.Join(dir, rel)
	fi, err := os.Lstat(p)
	if err != nil {
		return "", fmt.Errorf("secret %s: %w", rel, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return "", fmt.Errorf("secret %s: broken symlink: %w", rel, err)
		}
		realDir, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return "", fmt.Errorf("secrets directory %s: %w", dir, err)
		}
		if !within(real, realDir) {
			return "", fmt.Errorf("secret %s is a symlink to %s, outside the secrets directory %s: copy the file in instead", rel, real, dir)
		}
		p = real
		if fi, err = os.Stat(p); err != nil {
			return "", fmt.Errorf("secret %s: %w", rel, err)
		}
	}
	if fi.IsDir() {
		return "", fmt.Errorf("secret %s is a directory: secrets are files directly under %s", rel, filepath.Join(dir, host))
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("secret %s is not a regular file (%s)", rel, fi.Mode().Type())
	}
	return p, nil
}

func within(p, dir string) bool {
	r, err := filepath.Rel(dir, p)
	return err == nil && r != ".." && !strings.HasPrefix(r, "../") && !filepath.IsAbs(r)
}

func hashFile(p string) (int64, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// Owner is the host's SFTP user on the server, which alone may read the
// published secrets. UID or GID -1 keeps whoever runs the deploy (a local
// try-out without root).
type Owner struct{ UID, GID int }

// NoOwner leaves published secrets owned by the deploying user.
var NoOwner = Owner{UID: -1, GID: -1}

// LookupOwner finds the SFTP user a host logs in as (services.bento.user).
func LookupOwner(name string) (Owner, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return Owner{}, fmt.Errorf("SFTP user %q: %w (create the host's user on the server: the bento server module does)", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return Owner{}, fmt.Errorf("SFTP user %q: non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	return Owner{UID: uid, GID: gid}, nil
}

// ErrChanged is returned (wrapped) when a secret changed between Collect
// and Write: its manifest line would lie.
var ErrChanged = errors.New("changed while being published; run bento deploy again")

// Write fills dst, a fresh empty directory that becomes
// <root>/<host>/secrets/<version>/, with host's secrets as Collect listed
// them: files 0400 and dst itself 0500, all owned by owner, each synced.
// It reads each file again and fails with ErrChanged when its content is no
// longer what files says.
func Write(ctx context.Context, dst, dir, host string, files []manifest.File, owner Owner) error {
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := ValidateName(Name(f.Path)); err != nil {
			return err
		}
		src, err := source(dir, host, f.Path)
		if err != nil {
			return err
		}
		if err := copySecret(src, filepath.Join(dst, f.Path), f, owner); err != nil {
			return fmt.Errorf("secret %s: %w", filepath.Join(host, f.Path), err)
		}
	}
	if err := os.Lchown(dst, owner.UID, owner.GID); err != nil {
		return fmt.Errorf("secrets directory: %w", err)
	}
	if err := os.Chmod(dst, publishedDirMode); err != nil {
		return fmt.Errorf("secrets directory: %w", err)
	}
	if err := atomicfile.SyncDir(dst); err != nil {
		return fmt.Errorf("secrets directory: %w", err)
	}
	return nil
}

func copySecret(src, dst string, f manifest.File, owner Owner) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = atomicfile.CopyVerified(dst, atomicfile.Verified{
		Content: atomicfile.Content{Size: f.Size, SHA256: f.SHA256},
		Perm:    PublishedMode,
		Secret:  true,
		Finish: func(out *os.File) error {
			if err := out.Chown(owner.UID, owner.GID); err != nil {
				return err
			}
			// The umask may have taken bits off; a chown may have cleared some.
			return out.Chmod(PublishedMode)
		},
	}, func(w io.Writer) (int64, error) { return io.Copy(w, in) })
	var mismatch *atomicfile.MismatchError
	if errors.As(err, &mismatch) {
		return ErrChanged
	}
	return err
}

// CheckExposure refuses a secrets directory that Nix would copy into the
// world-readable store while it evaluates the fleet: one inside the flake's
// directory when that directory is not a git work tree (Nix copies all of
// it), or was named with path: (plain), or when git tracks files under it
// (Nix copies tracked files). Call it before evaluating anything. The
// returned note, when not empty, is advice that does not stop a deploy.
// Classic fleets (hosts/<name>/configuration.nix) are never copied whole;
// pass classic to skip the check.
func CheckExposure(ctx context.Context, fleetDir, secretsDir string, plain, classic bool) (string, error) {
	if fleetDir == "" || secretsDir == "" || classic {
		return "", nil
	}
	realFleet, realSecrets, err := resolveDirs(fleetDir, secretsDir)
	if err != nil || realSecrets == "" || !within(realSecrets, realFleet) {
		return "", err
	}
	const fix = "move the secrets out of the flake (--secrets-dir), or keep the fleet in git with the secrets untracked (echo /secrets/ >> .gitignore)"
	if plain {
		return "", fmt.Errorf("secrets directory %s is inside the fleet %s, given as path:, so Nix would copy the secrets into the world-readable Nix store: %s", secretsDir, fleetDir, fix)
	}
	top, err := gitcmd.Top(ctx, realFleet)
	if err != nil {
		return "", fmt.Errorf("secrets directory %s is inside the fleet %s: %w", secretsDir, fleetDir, err)
	}
	if top == "" {
		return "", fmt.Errorf("secrets directory %s is inside the fleet %s, which is not a git work tree, so Nix would copy the secrets into the world-readable Nix store: %s", secretsDir, fleetDir, fix)
	}
	return checkUntracked(ctx, top, realSecrets, secretsDir)
}

// resolveDirs follows the symlinks of both directories; realSecrets is ""
// when the secrets directory does not exist.
func resolveDirs(fleetDir, secretsDir string) (realFleet, realSecrets string, err error) {
	realSecrets, err = filepath.EvalSymlinks(secretsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("secrets directory %s: %w", secretsDir, err)
	}
	realFleet, err = filepath.EvalSymlinks(fleetDir)
	if err != nil {
		return "", "", fmt.Errorf("fleet directory %s: %w", fleetDir, err)
	}
	return realFleet, realSecrets, nil
}

// checkUntracked refuses secrets (at realSecrets, in the work tree top)
// that git tracks, and notes ones that git does not ignore.
func checkUntracked(ctx context.Context, top, realSecrets, secretsDir string) (string, error) {
	files, submodules, err := gitcmd.Tracked(ctx, top, realSecrets)
	if err != nil {
		return "", fmt.Errorf("secrets directory %s: %w", secretsDir, err)
	}
	if tracked := append(files, submodules...); len(tracked) > 0 {
		return "", fmt.Errorf("secret %s is tracked by git, so Nix copies it into the world-readable Nix store: git rm -r --cached %s && echo /%s/ >> .gitignore (and rotate the secret: it is in git history)", tracked[0], DirName, DirName)
	}
	ignored, err := gitcmd.Ignored(ctx, top, realSecrets)
	if err != nil {
		return "", fmt.Errorf("secrets directory %s: %w", secretsDir, err)
	}
	if !ignored {
		return fmt.Sprintf("%s is not in .gitignore: a git add -A would put the secrets into the Nix store at the next evaluation; add /%s/ to .gitignore", secretsDir, DirName), nil
	}
	return "", nil
}

// Guard resolves the secrets directory of the fleet at flakeRef (as given
// to --flake) and checks, before anything evaluates the fleet, that Nix
// will not copy it into its store (see CheckExposure). flag is
// --secrets-dir ("" for the default, secrets/ next to the flake). A remote
// flake has no default secrets directory.
func Guard(ctx context.Context, flakeRef, flag string) (dir, note string, err error) {
	ref := flakeRef
	if ref == "" {
		ref = "."
	}
	plain := strings.HasPrefix(ref, "path:")
	p := strings.TrimPrefix(ref, "path:")
	if strings.ContainsAny(p, ":#?") {
		dir, err = ResolveDir(flag, "")
		return dir, "", err
	}
	fleetDir, err := filepath.Abs(p)
	if err != nil {
		return "", "", fmt.Errorf("fleet %s: %w", ref, err)
	}
	if dir, err = ResolveDir(flag, fleetDir); err != nil {
		return "", "", err
	}
	_, statErr := os.Stat(filepath.Join(fleetDir, "flake.nix"))
	classic := errors.Is(statErr, fs.ErrNotExist)
	note, err = CheckExposure(ctx, fleetDir, dir, plain, classic)
	return dir, note, err
}
