package status

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

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
)

// LogFile is one log a host uploaded under reports/logs/.
type LogFile struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
	// Latest is the log of the host's last attempt: the one its report
	// names, else the most recently written.
	Latest bool `json:"latest"`
}

// ErrNoLogs is returned (wrapped) when a host has uploaded no log yet.
var ErrNoLogs = errors.New("no logs uploaded yet")

// openChroot opens a host's chroot as an os.Root, so that no symlink the
// host planted in its reports/ leads a root-run bento out of it.
func openChroot(root, host string) (*os.Root, error) {
	if err := fleet.ValidateName(host); err != nil {
		return nil, &UsageError{err}
	}
	r, err := os.OpenRoot(hostDir(root, host))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &UsageError{fmt.Errorf("host %s: no chroot at %s (bento status lists the hosts; --chroot-root sets the root)", host, hostDir(root, host))}
		}
		return nil, fmt.Errorf("host %s: %s", host, reason(err))
	}
	return r, nil
}

// Logs lists a host's logs, oldest first, after enforcing limits on its
// reports/ (as bento status does).
func Logs(root, host string, limits ReportLimits) ([]LogFile, error) {
	r, err := openChroot(root, host)
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
func checkLimits(r *os.Root, host string, limits ReportLimits) error {
	_, err := enforceReports(r, limits, false)
	switch {
	case errors.Is(err, ErrReportsOverLimit):
		return fmt.Errorf("host %s: %w (--reports-max-bytes and --reports-max-files raise the limits)", host, err)
	case err != nil:
		return fmt.Errorf("host %s: %w", host, err)
	}
	return nil
}

func listLogs(r *os.Root, host string) ([]LogFile, error) {
	d, err := r.Open(manifest.LogsDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("host %s: %w", host, ErrNoLogs)
		}
		return nil, fmt.Errorf("host %s: %s: %s", host, manifest.LogsDir, reason(err))
	}
	defer d.Close()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("host %s: %s: %s", host, manifest.LogsDir, reason(err))
	}
	var logs []LogFile
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
		logs = append(logs, LogFile{Name: e.Name(), Size: info.Size(), ModTime: info.ModTime()})
	}
	if len(logs) == 0 {
		return nil, fmt.Errorf("host %s: %w", host, ErrNoLogs)
	}
	slices.SortFunc(logs, func(a, b LogFile) int {
		if c := a.ModTime.Compare(b.ModTime); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	latest := len(logs) - 1
	if data, err := readCapped(r, manifest.StatusFile, MaxReportSize); err == nil {
		if rep, err := parseReport(data, host); err == nil && rep.Log != "" {
			if i := slices.IndexFunc(logs, func(l LogFile) bool { return l.Name == rep.Log }); i >= 0 {
				latest = i
			}
		}
	}
	logs[latest].Latest = true
	return logs, nil
}

// pickLog finds the log called name (or starting with it, when that is
// unique), or the latest one when name is empty.
func pickLog(logs []LogFile, host, name string) (LogFile, error) {
	if name == "" {
		i := slices.IndexFunc(logs, func(l LogFile) bool { return l.Latest })
		return logs[i], nil
	}
	var matches []LogFile
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
		return LogFile{}, &UsageError{fmt.Errorf("host %s has no log %q (bento logs --list %s shows them)", host, termsafe.Line(name), host)}
	}
	var names []string
	for _, m := range matches {
		names = append(names, termsafe.Line(m.Name))
	}
	return LogFile{}, &UsageError{fmt.Errorf("host %s: %q matches %d logs (%s): give more of the name", host, name, len(matches), strings.Join(names, ", "))}
}

// DefaultMaxLogBytes is how much of a log bento logs prints, decompressed,
// by default: a small gzip file can inflate without bound.
const DefaultMaxLogBytes = 64 << 20

// ErrLogTooBig is returned (wrapped) once a log's decompressed output
// passed the limit.
var ErrLogTooBig = errors.New("over the limit of decompressed output")

// OpenLog opens a host's log (the latest when name is empty), decompressed
// when it is gzipped. Reading more than max bytes from it fails with
// ErrLogTooBig.
func OpenLog(root, host, name string, max int64, limits ReportLimits) (io.ReadCloser, LogFile, error) {
	r, err := openChroot(root, host)
	if err != nil {
		return nil, LogFile{}, err
	}
	defer r.Close()
	if err := checkLimits(r, host, limits); err != nil {
		return nil, LogFile{}, err
	}
	logs, err := listLogs(r, host)
	if err != nil {
		return nil, LogFile{}, err
	}
	l, err := pickLog(logs, host, name)
	if err != nil {
		return nil, LogFile{}, err
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
	return fmt.Errorf("host %s: log %s: stopped after %s: %w (--max-bytes raises it)", host, termsafe.Line(name), bytesize.Format(max), ErrLogTooBig)
}

// openLogFile opens a log at offset, decompressing gzip (by its magic
// bytes, whatever the name says).
func openLogFile(r *os.Root, host, name string, offset int64) (io.ReadCloser, error) {
	f, err := r.OpenFile(filepath.Join(manifest.LogsDir, name), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("host %s: log %s: %s", host, termsafe.Line(name), reason(err))
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("host %s: log %s is not a regular file", host, termsafe.Line(name))
	}
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("host %s: log %s: %w", host, termsafe.Line(name), err)
		}
		if _, err := io.CopyN(io.Discard, zr, offset); err != nil && err != io.EOF {
			f.Close()
			return nil, fmt.Errorf("host %s: log %s: %w", host, termsafe.Line(name), err)
		}
		return readCloser{zr, f}, nil
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("host %s: log %s: %w", host, termsafe.Line(name), err)
		}
		br.Reset(f)
	}
	return readCloser{br, f}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// FollowLog prints a host's log (the latest, or the one called name) and
// then what is added to it; without a name it moves on to each newer log
// the host uploads, under a "==> name <==" header. It returns nil when ctx
// is done. Gzipped logs are printed whole when they appear.
func FollowLog(ctx context.Context, root, host, name string, w io.Writer, every time.Duration, max int64, limits ReportLimits) error {
	r, err := openChroot(root, host)
	if err != nil {
		return err
	}
	defer r.Close()
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("host %s: follow: %w", host, err)
	}
	defer watcher.Close()
	var cur string
	var done int64 // bytes of cur already printed (decompressed)
	step := func() error {
		for _, dir := range []string{manifest.ReportsDir, manifest.LogsDir} {
			p := filepath.Join(hostDir(root, host), dir)
			if st, err := os.Lstat(p); err == nil && st.IsDir() && !slices.Contains(watcher.WatchList(), p) {
				watcher.Add(p)
			}
		}
		if err := checkLimits(r, host, limits); err != nil {
			return err
		}
		logs, err := listLogs(r, host)
		if errors.Is(err, ErrNoLogs) {
			return nil
		}
		if err != nil {
			return err
		}
		l, err := pickLog(logs, host, name)
		if err != nil {
			if name != "" && cur == "" {
				return err
			}
			return nil
		}
		if l.Name != cur {
			if cur != "" {
				fmt.Fprintf(w, "\n==> %s <==\n", termsafe.Line(l.Name))
			}
			cur, done = l.Name, 0
		}
		if done > max {
			return nil // reported once already
		}
		rc, err := openLogFile(r, host, l.Name, done)
		if err != nil {
			return err
		}
		defer rc.Close()
		n, err := io.Copy(w, &capReader{r: rc, left: max - done, max: max, host: host, name: l.Name})
		done += n
		if errors.Is(err, ErrLogTooBig) {
			done = max + 1
		}
		return err
	}
	if err := step(); err != nil {
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
		if err := step(); err != nil {
			return err
		}
	}
}
