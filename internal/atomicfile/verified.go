package atomicfile

import (
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
)

// Content is what a file must hold: its size and its sha256 (hex).
type Content struct {
	Size   int64
	SHA256 string
}

// MismatchError says that the bytes written were not the Content
// announced; the file that held them is gone.
type MismatchError struct {
	Want Content
	// Size is how many bytes were written; SHA256 is their hash, empty
	// when the size already differed.
	Size   int64
	SHA256 string
	// Secret keeps the hashes out of the message: the hash of a short
	// secret in a log would let anyone guess it.
	Secret bool
}

func (e *MismatchError) Error() string {
	if e.Size != e.Want.Size {
		return fmt.Sprintf("size %d, but the manifest says %d", e.Size, e.Want.Size)
	}
	if e.Secret {
		return "sha256 differs from the manifest's"
	}
	return fmt.Sprintf("sha256 %s, but the manifest says %s", e.SHA256, e.Want.SHA256)
}

// Verify is nil when n bytes whose sha256 is sum are want, a *MismatchError
// otherwise.
func Verify(want Content, n int64, sum []byte) error {
	if n != want.Size {
		return &MismatchError{Want: want, Size: n}
	}
	got := hex.EncodeToString(sum)
	if !strings.EqualFold(got, want.SHA256) {
		return &MismatchError{Want: want, Size: n, SHA256: got}
	}
	return nil
}

// Verified says how CopyVerified makes its file.
type Verified struct {
	Content
	// Perm is the mode the file is created with (the umask applies:
	// Finish can set it exactly).
	Perm fs.FileMode
	// Finish, when set, runs on the complete, verified file before it is
	// synced and closed: its owner and mode go there, so the file has
	// them before anyone can find it complete.
	Finish func(*os.File) error
	// Secret: the content is a secret, see MismatchError.Secret.
	Secret bool
	// NoSync leaves the fsync to the caller (a publisher that syncs every
	// new file with one syncfs).
	NoSync bool
}

// CopyVerified creates dst, which must not exist (nothing there is
// followed: O_EXCL|O_NOFOLLOW), fills it with what fill writes, and keeps
// it only when those bytes are v.Content, fsynced: on any failure dst is
// removed, and a mismatch is a *MismatchError. It returns how many bytes
// fill wrote. kill -9 midway leaves a partial dst, which is why callers
// name it so that their cleaners recognise it (a temporary or staging
// name) or rename it into place afterwards.
func CopyVerified(dst string, v Verified, fill func(io.Writer) (int64, error)) (n int64, err error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, v.Perm)
	if err != nil {
		return 0, err
	}
	h := sha256.New()
	n, err = fill(io.MultiWriter(out, h))
	if err == nil {
		err = Verify(v.Content, n, h.Sum(nil))
		if mismatch, ok := err.(*MismatchError); ok {
			mismatch.Secret = v.Secret
		}
	}
	if err == nil && v.Finish != nil {
		err = v.Finish(out)
	}
	if err == nil && !v.NoSync {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
	}
	return n, err
}

// WriteNew writes data to path with permissions perm, durably, and fails
// with an error that wraps fs.ErrExist if path exists, also when it
// appeared meanwhile: two writers at once cannot replace each other's file
// (a key, say). A crash leaves path absent or complete.
func WriteNew(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, TempPrefix+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = fillSynced(f, func(f *os.File) error {
		if err := f.Chmod(perm); err != nil {
			return err
		}
		_, err := f.Write(data)
		return err
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// link(2) fails with EEXIST instead of replacing, unlike rename.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return &fs.PathError{Op: "write", Path: path, Err: fs.ErrExist}
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}
