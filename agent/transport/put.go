package transport

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"time"

	"context"

	"github.com/pkg/sftp"
)

// PutOptions say what a file written by Put looks like once in place.
type PutOptions struct {
	// Mode is the file's permission bits; 0644 when zero.
	Mode os.FileMode
	// ModTime, when set, becomes the file's modification time (a mirror
	// keeps the primary's, which its readers compare).
	ModTime time.Time
	// Chown gives the file to UID and GID (the writer must be root).
	Chown    bool
	UID, GID int
}

// TempPrefix starts the name of every temporary file Put writes: a file
// with it that is older than a push was left by a killed one.
const TempPrefix = ".bento-put-"

// Put writes r to the remote file p the way WriteFile does (a temporary
// name beside it, fsync, then an atomic rename), with its mode, owner and
// time set before the rename: a reader sees the old file or the new one,
// complete and with its final attributes, never a part. It returns the
// bytes written.
func (c *Conn) Put(ctx context.Context, p string, r io.Reader, o PutOptions) (int64, error) {
	if o.Mode == 0 {
		o.Mode = 0o644
	}
	dir, base := path.Split(p)
	tmp := fmt.Sprintf("%s%s%08x-%s", dir, TempPrefix, rand.Uint32(), base)
	var n int64
	err := c.guard(ctx, "put "+p, func(kick func()) error {
		var err error
		n, err = c.writeTemp(tmp, r, o, kick)
		if err != nil {
			return err
		}
		kick()
		return c.renameInto(tmp, p)
	})
	return n, err
}

// writeTemp makes the new file tmp, complete with its attributes, or
// removes it. It returns the bytes written.
func (c *Conn) writeTemp(tmp string, r io.Reader, o PutOptions, kick func()) (int64, error) {
	f, err := c.sftp.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_TRUNC)
	if err != nil {
		return 0, err
	}
	n, err := c.fillTemp(f, r, o, kick)
	if err != nil {
		f.Close()
		c.sftp.Remove(tmp)
		return n, err
	}
	if err := f.Close(); err != nil {
		c.sftp.Remove(tmp)
		return n, err
	}
	if !o.ModTime.IsZero() {
		// After the close: a write would move the time again.
		if err := c.sftp.Chtimes(tmp, o.ModTime, o.ModTime); err != nil {
			c.sftp.Remove(tmp)
			return n, err
		}
	}
	return n, nil
}

// fillTemp copies r into f, syncs it and sets its mode and owner.
func (c *Conn) fillTemp(f *sftp.File, r io.Reader, o PutOptions, kick func()) (int64, error) {
	n, err := copyKicking(f, r, kick)
	if err != nil {
		return n, err
	}
	if err := c.syncFile(f); err != nil {
		return n, err
	}
	if err := f.Chmod(o.Mode); err != nil {
		return n, err
	}
	if o.Chown {
		if err := f.Chown(o.UID, o.GID); err != nil {
			return n, fmt.Errorf("chown to %d:%d: %w", o.UID, o.GID, err)
		}
	}
	return n, nil
}

func copyKicking(w io.Writer, r io.Reader, kick func()) (int64, error) {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, werr
			}
			n += int64(k)
			kick()
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// Lstat returns the attributes of a remote path without following a
// final symlink.
func (c *Conn) Lstat(ctx context.Context, p string) (os.FileInfo, error) {
	var fi os.FileInfo
	err := c.guard(ctx, "lstat "+p, func(func()) error {
		var err error
		fi, err = c.sftp.Lstat(p)
		return err
	})
	return fi, err
}

// Chmod sets a remote path's permission bits.
func (c *Conn) Chmod(ctx context.Context, p string, mode os.FileMode) error {
	return c.guard(ctx, "chmod "+p, func(func()) error { return c.sftp.Chmod(p, mode) })
}

// Chown gives a remote path to uid:gid.
func (c *Conn) Chown(ctx context.Context, p string, uid, gid int) error {
	return c.guard(ctx, "chown "+p, func(func()) error { return c.sftp.Chown(p, uid, gid) })
}

// RemoveDir removes an empty remote directory.
func (c *Conn) RemoveDir(ctx context.Context, p string) error {
	return c.guard(ctx, "rmdir "+p, func(func()) error { return c.sftp.RemoveDirectory(p) })
}

// Owner is the numeric owner of a remote file's attributes (-1, -1 when
// the server did not send them).
func Owner(fi os.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*sftp.FileStat); ok {
		return int(st.UID), int(st.GID)
	}
	return -1, -1
}

// ReadOwned reads a remote file of at most max bytes, but only when the
// file it opened (the attributes of the open handle, so after any
// symlink was followed) passes check: a regular file owned by the
// expected user, say. SFTP has no O_NOFOLLOW; checking the handle is what
// keeps a symlink planted by a hostile writer from making a root-run
// reader copy a file that writer could not read itself.
func (c *Conn) ReadOwned(ctx context.Context, p string, max int64, check func(os.FileInfo) error) ([]byte, os.FileInfo, error) {
	var buf bytes.Buffer
	var fi os.FileInfo
	err := c.guard(ctx, "read "+p, func(kick func()) error {
		f, err := c.sftp.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err = f.Stat()
		if err != nil {
			return err
		}
		if err := check(fi); err != nil {
			return err
		}
		if fi.Size() > max {
			return &TooLargeError{Max: max}
		}
		_, err = copyLimited(&buf, f, max, kick)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), fi, nil
}
