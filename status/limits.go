package status

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/manifest"
)

// Defaults of the per-host limits on reports/. The agent's own defaults
// (20 logs of at most 1 MiB, logsKept and logMaxBytes) stay far below
// them; a host above them is broken or hostile.
const (
	DefaultReportsMaxBytes = 64 << 20
	DefaultReportsMaxFiles = 500
)

// reportsMaxDepth bounds how deep a walk of reports/ goes: the agent writes
// two levels (reports/status.json, reports/logs/NAME).
const reportsMaxDepth = 8

// ReportLimits bound what one host may keep in its reports/: the only
// directory of the server a host can write, on the filesystem that also
// holds every chroot and the cache pool.
type ReportLimits struct {
	// MaxBytes bounds the bytes of reports/ (the sum of its regular
	// files' apparent sizes); 0 means DefaultReportsMaxBytes.
	MaxBytes int64
	// MaxFiles bounds its entries (files, directories, symlinks, below
	// reports/ itself); 0 means DefaultReportsMaxFiles.
	MaxFiles int
}

func (l ReportLimits) withDefaults() ReportLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultReportsMaxBytes
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultReportsMaxFiles
	}
	return l
}

// walkBudget is how many entries a walk looks at before it stops: enough to
// see every log of a host over the limit, bounded so that a host with a
// million files cannot make every status run read them all.
func (l ReportLimits) walkBudget() int { return 2*l.MaxFiles + 1000 }

// ReportsOverLimit starts the message of a host whose reports/ was over its
// limits (bento status shows it as "unreadable: reports over limit").
const ReportsOverLimit = "reports over limit"

// ErrReportsOverLimit is returned (wrapped) when a host's reports/ is over
// its limits after the oldest logs were removed.
var ErrReportsOverLimit = errors.New(ReportsOverLimit)

// ReportsUsage is what a host keeps in reports/ and what enforcing the
// limits did to it.
type ReportsUsage struct {
	Limits ReportLimits
	// Bytes and Files are what reports/ held when it was read, before any
	// removal. With Truncated, the walk stopped at its budget or depth and
	// they are lower bounds.
	Bytes     int64
	Files     int
	Truncated bool
	// Removed are the logs removed, oldest first, and their bytes.
	Removed      []string
	RemovedBytes int64
	// RemoveErr is why a log could not be removed (permission denied when
	// not run as root); nil when all went.
	RemoveErr error
	// DryRun: the logs in Removed would have been removed.
	DryRun bool
}

// Exceeded tells whether reports/ was over a limit when it was read.
func (u ReportsUsage) Exceeded() bool {
	return u.Truncated || !u.Limits.holds(u.Bytes, u.Files)
}

// Over tells whether reports/ is still over a limit after the removals.
func (u ReportsUsage) Over() bool {
	if u.Truncated || u.RemoveErr != nil || u.DryRun {
		return u.Exceeded()
	}
	return !u.Limits.holds(u.Bytes-u.RemovedBytes, u.Files-len(u.Removed))
}

// Describe says, in one line, what reports/ holds against its limits and
// what was removed; "" when within them.
func (u ReportsUsage) Describe() string {
	if !u.Exceeded() {
		return ""
	}
	more := ""
	if u.Truncated {
		more = " or more"
	}
	s := fmt.Sprintf("reports/ holds %d files%s, %s%s (limits %d files, %s)",
		u.Files, more, bytesize.Format(u.Bytes), more, u.Limits.MaxFiles, bytesize.Format(u.Limits.MaxBytes))
	verb := "removed"
	if u.DryRun {
		verb = "would remove"
	}
	if len(u.Removed) > 0 {
		s += fmt.Sprintf("; %s its %d oldest logs (%s)", verb, len(u.Removed), bytesize.Format(u.RemovedBytes))
	}
	if u.RemoveErr != nil {
		s += "; cannot remove old logs: " + Reason(u.RemoveErr)
	}
	if u.Over() && u.RemoveErr == nil {
		s += "; removing old logs is not enough: look at what else the host put in its reports/"
	}
	return s
}

// reportEntry is one entry of reports/ a walk found.
type reportEntry struct {
	name    string // relative to reports/
	size    int64
	modTime time.Time
	log     bool // a regular file right in reports/logs/, not a temporary
}

// EnforceReportLimits measures host's reports/ against limits and removes
// its oldest logs as far as that brings it under them (nothing with
// dryRun). It fails with ErrReportsOverLimit when reports/ is still over.
// A host without reports/ is within any limit.
func EnforceReportLimits(root, host string, limits ReportLimits, dryRun bool) (ReportsUsage, error) {
	r, err := OpenChroot(root, host)
	if err != nil {
		return ReportsUsage{Limits: limits.withDefaults()}, err
	}
	defer r.Close()
	u, err := EnforceReportLimitsIn(r, limits, dryRun)
	if err != nil {
		return u, fmt.Errorf("host %s: %w", host, err)
	}
	return u, nil
}

// EnforceReportLimitsIn does EnforceReportLimits in an open chroot.
// Removals happen inside an os.Root of reports/ only, so a symlink the host
// planted (in place of logs/, or of a log) never leads them anywhere else:
// the worst a racing host can do is make the server remove its own files.
func EnforceReportLimitsIn(chroot *os.Root, limits ReportLimits, dryRun bool) (ReportsUsage, error) {
	u := ReportsUsage{Limits: limits.withDefaults(), DryRun: dryRun}
	// <host>/ is root's, so the host cannot swap reports/ itself; a
	// directory, never followed through a symlink, is still checked.
	st, err := chroot.Lstat(manifest.ReportsDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return u, nil
	case err != nil:
		return u, fmt.Errorf("%s: %s", manifest.ReportsDir, Reason(err))
	case !st.IsDir():
		return u, nil // readCapped refuses what is below it, with the reason
	}
	rr, err := chroot.OpenRoot(manifest.ReportsDir)
	if err != nil {
		return u, fmt.Errorf("%s: %s", manifest.ReportsDir, Reason(err))
	}
	defer rr.Close()

	entries, err := walkReports(rr, u.Limits, &u)
	if err != nil {
		return u, err
	}
	if !u.Exceeded() {
		return u, nil
	}
	u.Removed, u.RemovedBytes = planRemoval(entries, u)
	if !dryRun {
		u.remove(rr, entries)
	}
	if u.Over() {
		return u, fmt.Errorf("%w: %s", ErrReportsOverLimit, u.Describe())
	}
	return u, nil
}

// remove removes the planned logs, stopping at the first that will not
// go: what was not removed still counts.
func (u *ReportsUsage) remove(rr *os.Root, entries []reportEntry) {
	for i, name := range u.Removed {
		if err := rr.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			for _, rest := range u.Removed[i:] {
				u.RemovedBytes -= sizeOf(entries, rest)
			}
			u.Removed, u.RemoveErr = u.Removed[:i], err
			return
		}
	}
}

func sizeOf(entries []reportEntry, name string) int64 {
	if i := slices.IndexFunc(entries, func(e reportEntry) bool { return e.name == name }); i >= 0 {
		return entries[i].size
	}
	return 0
}

// walkReports lists reports/ (inside rr) breadth first, counting every
// entry and the bytes of each, and stops at the walk budget or the depth
// limit (then u.Truncated).
func walkReports(rr *os.Root, l ReportLimits, u *ReportsUsage) ([]reportEntry, error) {
	w := &reportsWalk{
		rr: rr, u: u, budget: l.walkBudget(),
		logsDir: strings.TrimPrefix(manifest.LogsDir, manifest.ReportsDir+"/"),
		queue:   []reportsDir{{".", 0}},
	}
	for len(w.queue) > 0 && !u.Truncated {
		d := w.queue[0]
		w.queue = w.queue[1:]
		if err := w.readDir(d); err != nil {
			return w.out, err
		}
	}
	return w.out, nil
}

type reportsDir struct {
	name  string
	depth int
}

// reportsWalk is walkReports' state.
type reportsWalk struct {
	rr      *os.Root
	u       *ReportsUsage
	budget  int    // entries left to look at
	logsDir string // logs/, relative to reports/
	queue   []reportsDir
	out     []reportEntry
}

// readDir adds the entries of d, queueing its subdirectories. Only
// reports/ itself must open: anything below it that vanished or was
// swapped while walking is the host's doing.
func (w *reportsWalk) readDir(d reportsDir) error {
	// O_NONBLOCK|O_DIRECTORY: a FIFO swapped in for a directory fails
	// at once instead of hanging the read.
	f, err := w.rr.OpenFile(d.name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_DIRECTORY, 0)
	if err != nil {
		if d.name == "." {
			return fmt.Errorf("%s: %s", manifest.ReportsDir, Reason(err))
		}
		return nil
	}
	defer f.Close()
	for {
		batch, err := f.ReadDir(256)
		for _, e := range batch {
			if !w.add(d, e) {
				break
			}
		}
		if err != nil || len(batch) == 0 || w.u.Truncated {
			return nil
		}
	}
}

// add counts one entry of d; false when the walk budget is spent.
func (w *reportsWalk) add(d reportsDir, e fs.DirEntry) bool {
	if w.budget == 0 {
		w.u.Truncated = true
		return false
	}
	w.budget--
	name := path.Join(d.name, e.Name())
	info, err := e.Info()
	if err != nil {
		return true
	}
	// Regular files at their apparent size: a sparse file counts in full.
	// Directories count as files only (their size depends on the
	// filesystem); the rounding to blocks is bounded by the limit on files.
	var size int64
	if info.Mode().IsRegular() {
		size = info.Size()
	}
	w.u.Files++
	w.u.Bytes += size
	switch {
	case e.IsDir() && d.depth+1 < reportsMaxDepth:
		w.queue = append(w.queue, reportsDir{name, d.depth + 1})
	case e.IsDir():
		w.u.Truncated = true
	}
	w.out = append(w.out, reportEntry{
		name:    name,
		size:    size,
		modTime: info.ModTime(),
		log:     d.name == w.logsDir && e.Type().IsRegular() && !strings.HasPrefix(e.Name(), "."),
	})
	return true
}

// planRemoval picks the oldest logs whose removal brings reports/ under
// its limits. When even removing every log would not, it picks none: the
// logs are the admin's record of what the host did, and something else
// fills its reports/.
func planRemoval(entries []reportEntry, u ReportsUsage) ([]string, int64) {
	bytes, files := u.Bytes, u.Files
	var names []string
	var removed int64
	for _, l := range oldestLogs(entries) {
		if u.Limits.holds(bytes, files) {
			break
		}
		names = append(names, l.name)
		removed += l.size
		bytes -= l.size
		files--
	}
	// A walk cut short saw only part of the logs; removing what it saw
	// still helps the next read, so it goes ahead.
	if !u.Truncated && !u.Limits.holds(bytes, files) {
		return nil, 0
	}
	return names, removed
}

// oldestLogs are the logs among entries, oldest first.
func oldestLogs(entries []reportEntry) []reportEntry {
	var logs []reportEntry
	for _, e := range entries {
		if e.log {
			logs = append(logs, e)
		}
	}
	slices.SortFunc(logs, func(a, b reportEntry) int {
		if c := a.modTime.Compare(b.modTime); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	return logs
}

// holds tells whether bytes and files are within the limits.
func (l ReportLimits) holds(bytes int64, files int) bool {
	return bytes <= l.MaxBytes && files <= l.MaxFiles
}
