// Package logs lists, prints and follows the logs a host uploads under
// reports/logs/ in its chroot (bento logs). Every read goes through an
// os.Root of the chroot after status has enforced the reports/ limits, and
// every byte is the host's: bounded when decompressed, and sanitized by
// TerminalWriter before it reaches a terminal.
package logs

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

// File is one log a host uploaded under reports/logs/.
type File struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
	// Latest is the log of the host's last attempt: the one its report
	// names, else the most recently written.
	Latest bool `json:"latest"`
}

// ErrNoLogs is returned (wrapped) when a host has uploaded no log yet.
var ErrNoLogs = errors.New("no logs uploaded yet")

// List lists a host's logs, oldest first, after enforcing limits on its
// reports/ (as bento status does).
func List(root, host string, limits status.ReportLimits) ([]File, error) {
	r, err := status.OpenChroot(root, host)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := checkLimits(r, host, limits); err != nil {
		return nil, err
	}
	return listLogs(r, host)
}

// checkLimits enforces the limits on a host's reports/ before its logs are
// read: the oldest logs beyond them are removed, and a reports/ still over
// them is not read at all.
func checkLimits(r *os.Root, host string, limits status.ReportLimits) error {
	_, err := status.EnforceReportLimitsIn(r, limits, false)
	switch {
	case errors.Is(err, status.ErrReportsOverLimit):
		return fmt.Errorf("host %s: %w (--reports-max-bytes and --reports-max-files raise the limits)", host, err)
	case err != nil:
		return fmt.Errorf("host %s: %w", host, err)
	}
	return nil
}

func listLogs(r *os.Root, host string) ([]File, error) {
	d, err := r.Open(manifest.LogsDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("host %s: %w", host, ErrNoLogs)
		}
		return nil, fmt.Errorf("host %s: %s: %s", host, manifest.LogsDir, status.Reason(err))
	}
	defer d.Close()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("host %s: %s: %s", host, manifest.LogsDir, status.Reason(err))
	}
	var logs []File
	for _, e := range entries {
		// Regular files only: the agent uploads to a dot-prefixed temporary
		// name, and a symlink could point anywhere.
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		logs = append(logs, File{Name: e.Name(), Size: info.Size(), ModTime: info.ModTime()})
	}
	if len(logs) == 0 {
		return nil, fmt.Errorf("host %s: %w", host, ErrNoLogs)
	}
	slices.SortFunc(logs, func(a, b File) int {
		if c := a.ModTime.Compare(b.ModTime); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	logs[latest(r, host, logs)].Latest = true
	return logs, nil
}

// latest is the index of the log of the host's last attempt: the one its
// report names, else the most recently written (logs are oldest first).
func latest(r *os.Root, host string, logs []File) int {
	if rep, err := status.ReadReport(r, host); err == nil && rep.Log != "" {
		if i := slices.IndexFunc(logs, func(l File) bool { return l.Name == rep.Log }); i >= 0 {
			return i
		}
	}
	return len(logs) - 1
}

// pickLog finds the log called name (or starting with it, when that is
// unique), or the latest one when name is empty.
func pickLog(logs []File, host, name string) (File, error) {
	if name == "" {
		i := slices.IndexFunc(logs, func(l File) bool { return l.Latest })
		return logs[i], nil
	}
	var matches []File
	for _, l := range logs {
		if l.Name == name {
			return l, nil
		}
		if strings.HasPrefix(l.Name, name) {
			matches = append(matches, l)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return File{}, &status.UsageError{Err: fmt.Errorf("host %s has no log %q (bento logs --list %s shows them)", host, termsafe.Line(name), host)}
	}
	var names []string
	for _, m := range matches {
		names = append(names, termsafe.Line(m.Name))
	}
	return File{}, &status.UsageError{Err: fmt.Errorf("host %s: %q matches %d logs (%s): give more of the name", host, name, len(matches), strings.Join(names, ", "))}
}

// DefaultMaxBytes is how much of a log bento logs prints, decompressed,
// by default: a small gzip file can inflate without bound.
const DefaultMaxBytes = 64 << 20

// ErrTooBig is returned (wrapped) once a log's decompressed output
// passed the limit.
var ErrTooBig = errors.New("over the limit of decompressed output")

// Open opens a host's log (the latest when name is empty), decompressed
// when it is gzipped. Reading more than max bytes from it fails with
// ErrTooBig.
func Open(root, host, name string, max int64, limits status.ReportLimits) (io.ReadCloser, File, error) {
	r, err := status.OpenChroot(root, host)
	if err != nil {
		return nil, File{}, err
	}
	defer r.Close()
	if err := checkLimits(r, host, limits); err != nil {
		return nil, File{}, err
	}
	logs, err := listLogs(r, host)
	if err != nil {
		return nil, File{}, err
	}
	l, err := pickLog(logs, host, name)
	if err != nil {
		return nil, File{}, err
	}
	rc, err := openLogFile(r, host, l.Name, 0)
	if err != nil {
		return nil, l, err
	}
	return readCloser{&capReader{r: rc, left: max, host: host, name: l.Name, max: max}, rc}, l, nil
}

// capReader fails once more than max bytes were read.
type capReader struct {
	r          io.Reader
	left, max  int64
	host, name string
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more tells a log of exactly max bytes from a longer one.
		var one [1]byte
		if n, _ := c.r.Read(one[:]); n == 0 {
			return 0, io.EOF
		}
		return 0, logTooBig(c.host, c.name, c.max)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

func logTooBig(host, name string, max int64) error {
	return fmt.Errorf("host %s: log %s: stopped after %s: %w (--max-bytes raises it)", host, termsafe.Line(name), bytesize.Format(max), ErrTooBig)
}

// openLogFile opens a log at offset, decompressing gzip (by its magic
// bytes, whatever the name says).
func openLogFile(r *os.Root, host, name string, offset int64) (io.ReadCloser, error) {
	f, err := r.OpenFile(filepath.Join(manifest.LogsDir, name), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("host %s: log %s: %s", host, termsafe.Line(name), status.Reason(err))
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("host %s: log %s is not a regular file", host, termsafe.Line(name))
	}
	rd, err := skipTo(f, offset)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("host %s: log %s: %w", host, termsafe.Line(name), err)
	}
	return readCloser{rd, f}, nil
}

// skipTo is f's content from offset: decompressed and skipped to when f
// is gzipped, sought to when it is not.
func skipTo(f *os.File, offset int64) (io.Reader, error) {
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, err
		}
		if _, err := io.CopyN(io.Discard, zr, offset); err != nil && err != io.EOF {
			return nil, err
		}
		return zr, nil
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return nil, err
		}
		br.Reset(f)
	}
	return br, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// Follow prints a host's log (the latest, or the one called name) and
// then what is added to it; without a name it moves on to each newer log
// the host uploads, under a "==> name <==" header. It returns nil when ctx
// is done. Gzipped logs are printed whole when they appear. Without a
// name, a tick under way (its live progress) is followed in the log the
// agent appends to as it runs, and then in that attempt's gzipped log
// from where the growing one stopped.
func Follow(ctx context.Context, root, host, name string, w io.Writer, every time.Duration, max int64, limits status.ReportLimits) error {
	r, err := status.OpenChroot(root, host)
	if err != nil {
		return err
	}
	defer r.Close()
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("host %s: follow: %w", host, err)
	}
	defer watcher.Close()
	f := &follower{r: r, watcher: watcher, dir: filepath.Join(root, host), host: host, name: name, w: w, max: max, limits: limits}
	if err := f.step(); err != nil {
		return err
	}
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		case <-watcher.Events:
		case <-watcher.Errors:
		}
		if err := f.step(); err != nil {
			return err
		}
	}
}

// follower is Follow's state between two looks at the host's logs.
type follower struct {
	r          *os.Root
	watcher    *fsnotify.Watcher
	dir        string // the host's chroot
	host, name string
	w          io.Writer
	max        int64
	limits     status.ReportLimits

	cur  string // the log being printed
	done int64  // bytes of cur already printed (decompressed)
}

// step prints what is new: the rest of the current log, or the header and
// start of a newer one.
func (f *follower) step() error {
	f.watch()
	if err := checkLimits(f.r, f.host, f.limits); err != nil {
		return err
	}
	l, ok, err := f.next()
	if !ok {
		return err
	}
	f.switchTo(l)
	if f.done > f.max {
		return nil // reported once already
	}
	return f.copy()
}

// next is the log to print now; ok is false when there is none (yet),
// with the error that ends the follow if any.
func (f *follower) next() (l File, ok bool, err error) {
	logs, err := listLogs(f.r, f.host)
	if errors.Is(err, ErrNoLogs) {
		return File{}, false, nil
	}
	if err != nil {
		return File{}, false, err
	}
	l, err = pickLog(logs, f.host, f.name)
	switch {
	case err != nil && f.name != "" && f.cur == "":
		return File{}, false, err // the log asked for does not exist
	case err != nil:
		return File{}, false, nil
	}
	if f.name == "" {
		l = f.latest(logs, l)
	}
	return l, true, nil
}

// latest is the log to follow when none was named: the growing log of a
// tick under way, else the one picked (l), unless that is older than the
// one being printed.
func (f *follower) latest(logs []File, l File) File {
	if live, ok := liveLog(f.r, f.host, logs, time.Now()); ok {
		return live
	}
	if i := slices.IndexFunc(logs, func(x File) bool { return x.Name == f.cur }); i >= 0 && logs[i].ModTime.After(l.ModTime) {
		// Never back to an older log: between a tick's last progress
		// record and its report, the report still names the previous
		// attempt's log, while the growing one is newer.
		return logs[i]
	}
	return l
}

// switchTo makes l the log being printed, with a header when it follows
// another one.
func (f *follower) switchTo(l File) {
	if l.Name != f.cur && f.cur != "" && strings.TrimSuffix(l.Name, ".gz") == f.cur {
		// The report's gzipped log of the attempt whose growing log was
		// printed: it goes on where that stopped.
		f.cur = l.Name
	}
	if l.Name != f.cur {
		if f.cur != "" {
			fmt.Fprintf(f.w, "\n==> %s <==\n", termsafe.Line(l.Name))
		}
		f.cur, f.done = l.Name, 0
	}
}

// liveLog is the growing log of a tick under way on the host, when its
// live progress names one that is there.
func liveLog(r *os.Root, host string, logs []File, now time.Time) (File, bool) {
	p, err := status.ReadProgress(r, host)
	if err != nil || p == nil || p.Log == "" {
		return File{}, false
	}
	rep, _ := status.ReadReport(r, host)
	if status.LiveProgress(p, rep, now) == nil {
		return File{}, false
	}
	i := slices.IndexFunc(logs, func(l File) bool { return l.Name == p.Log })
	if i < 0 {
		return File{}, false
	}
	return logs[i], true
}

// watch adds reports/ and reports/logs/ to the watcher once they exist.
func (f *follower) watch() {
	for _, dir := range []string{manifest.ReportsDir, manifest.LogsDir} {
		p := filepath.Join(f.dir, dir)
		if st, err := os.Lstat(p); err == nil && st.IsDir() && !slices.Contains(f.watcher.WatchList(), p) {
			f.watcher.Add(p)
		}
	}
}

// copy prints the current log from where the last step stopped, up to max.
func (f *follower) copy() error {
	rc, err := openLogFile(f.r, f.host, f.cur, f.done)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.Copy(f.w, &capReader{r: rc, left: f.max - f.done, max: f.max, host: f.host, name: f.cur})
	f.done += n
	if errors.Is(err, ErrTooBig) {
		f.done = f.max + 1
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		// A growing log is a gzip member per chunk: the last one may be
		// read while it is written. The rest comes with the next look.
		return nil
	}
	return err
}
