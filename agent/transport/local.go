package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// Local is a chroot in a local directory: an offline bundle (bento export)
// on a USB stick, read with the same operations a Conn offers, so that a
// tick applies it exactly as it applies what it reads over SFTP.
//
// The directory is as hostile as a server: every path is opened below it
// with os.Root (a symlink that leads out is refused, not followed), only
// regular files are read, and sizes are bounded as over SFTP. What the
// agent writes (reports/) goes below reports, another root: the bundle's
// own reports/ or a directory of the operator's choice (a read-only
// stick).
type Local struct {
	dir     string
	root    *os.Root
	reports *os.Root
}

// OpenLocal opens the bundle directory dir; reportDir, when not empty,
// receives what the agent writes under reports/ (created if missing).
func OpenLocal(dir, reportDir string) (*Local, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	l := &Local{dir: dir, root: root}
	if reportDir == "" {
		if err := root.Mkdir(manifest.ReportsDir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			root.Close()
			return nil, fmt.Errorf("bundle %s: %w (pass --report DIR when the bundle is read-only)", dir, err)
		}
		l.reports, err = root.OpenRoot(manifest.ReportsDir)
	} else {
		if err := os.MkdirAll(reportDir, 0o755); err != nil {
			root.Close()
			return nil, fmt.Errorf("report directory: %w", err)
		}
		l.reports, err = os.OpenRoot(reportDir)
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("bundle %s: reports: %w", dir, err)
	}
	return l, nil
}

// Dir is the bundle directory.
func (l *Local) Dir() string { return l.dir }

// Close releases the directories.
func (l *Local) Close() error {
	return errors.Join(l.reports.Close(), l.root.Close())
}

// where maps a chroot path to the root holding it.
func (l *Local) where(p string) (*os.Root, string, error) {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		p = "."
	}
	if p == manifest.ReportsDir {
		return l.reports, ".", nil
	}
	if rest, ok := strings.CutPrefix(p, manifest.ReportsDir+"/"); ok {
		return l.reports, rest, nil
	}
	return l.root, p, nil
}

// open opens a regular file for reading (O_NONBLOCK: a FIFO planted in
// the bundle must not hang the tick).
func (l *Local) open(p string) (*os.File, error) {
	r, name, err := l.where(p)
	if err != nil {
		return nil, err
	}
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("bundle: %s is not a regular file (%s)", p, fi.Mode().Type())
	}
	return f, nil
}

// Stat returns the attributes of a file of the bundle.
func (l *Local) Stat(ctx context.Context, p string) (os.FileInfo, error) {
	r, name, err := l.where(p)
	if err != nil {
		return nil, err
	}
	return r.Stat(name)
}

// ReadFile reads a whole file, refusing one larger than max bytes.
func (l *Local) ReadFile(ctx context.Context, p string, max int64) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := l.Download(ctx, p, &buf, max); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ReadHead reads the whole file (it is local: there is no request to
// save), within max.
func (l *Local) ReadHead(ctx context.Context, p string, chunk int, max int64, more func(head []byte) bool) ([]byte, bool, error) {
	data, err := l.ReadFile(ctx, p, max)
	if err != nil {
		return data, false, err
	}
	return data, true, nil
}

// Download copies a file to w, refusing more than max bytes.
func (l *Local) Download(ctx context.Context, p string, w io.Writer, max int64) (int64, error) {
	f, err := l.open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return copyLimited(w, ctxReader{ctx, f}, max, func() {})
}

// ctxReader stops a copy when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// WriteFile replaces a file atomically (temp, fsync, rename).
func (l *Local) WriteFile(ctx context.Context, p string, data []byte) error {
	r, name, err := l.where(p)
	if err != nil {
		return err
	}
	dir, base := path.Split(name)
	return atomicfile.ReplaceIn(r, name, fmt.Sprintf("%s.%s.tmp-%08x", dir, base, rand.Uint32()), data, 0o644)
}

// ReadDir lists a directory.
func (l *Local) ReadDir(ctx context.Context, p string) ([]os.FileInfo, error) {
	r, name, err := l.where(p)
	if err != nil {
		return nil, err
	}
	d, err := r.Open(name)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdir(-1)
}

// Remove deletes a file.
func (l *Local) Remove(ctx context.Context, p string) error {
	r, name, err := l.where(p)
	if err != nil {
		return err
	}
	return r.Remove(name)
}

// Mkdir creates a directory; an existing one is not an error.
func (l *Local) Mkdir(ctx context.Context, p string) error {
	r, name, err := l.where(p)
	if err != nil {
		return err
	}
	if err := r.Mkdir(name, 0o755); err != nil {
		if fi, serr := r.Stat(name); serr == nil && fi.IsDir() {
			return nil
		}
		return err
	}
	return nil
}

// Touch sets a file's modification time.
func (l *Local) Touch(ctx context.Context, p string, t time.Time) error {
	r, name, err := l.where(p)
	if err != nil {
		return err
	}
	return r.Chtimes(name, t, t)
}
