package mirror

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"regexp"
	"time"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

// MaxLogSize bounds a log pulled from a mirror: the agent's own bound on
// what it uploads (logMaxBytes is at most 64 MiB).
const MaxLogSize = 64 << 20

// logNameRE is the shape of the names the agent gives its logs
// (<version>-<time>.log.gz); nothing else is pulled.
var logNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.log(\.gz)?$`)

// PullReports brings each host's report (reports/status.json and the log
// it names) from the mirrors into the primary's chroots when it is newer
// (by finishedAt, or a heartbeat's mtime) than the one the primary holds.
// Everything read from a mirror is the host's writing and hostile: files
// must be regular, owned by the host's user there (so a symlink it
// planted cannot make root copy a file it could not read), within the
// size limits of bento status, and the report must parse as one for that
// host; locally they are written inside an os.Root of the chroot, by
// temporary name and rename, so no symlink in the primary's reports/ is
// followed either.
func PullReports(ctx context.Context, o Options, srcs []Dest) ([]HostResult, error) {
	o.defaults()
	hosts, err := pullHosts(o)
	if err != nil {
		return nil, err
	}
	var out []HostResult
	// One mirror after the other: two mirrors holding reports of the same
	// host compare against what the previous one brought.
	for _, d := range srcs {
		out = append(out, pullMirror(ctx, o, d, hosts)...)
	}
	sortResults(out)
	return out, nil
}

// pullHosts are the hosts whose reports are pulled: those Push copies.
func pullHosts(o Options) ([]string, error) { return pushHosts(o) }

func pullMirror(ctx context.Context, o Options, d Dest, hosts []string) []HostResult {
	return eachHost(ctx, o, d, hosts, func(ctx context.Context, c *transport.Conn, r *HostResult) error {
		return pullHost(ctx, o, c, d, r)
	})
}

// hostPull brings one host's report from one mirror.
type hostPull struct {
	c *transport.Conn
	d Dest
	r *HostResult
	// uid owns the host's reports/ on the mirror: the host's user there.
	uid int
}

// theirReport is the host's report as the mirror holds it.
type theirReport struct {
	data  []byte
	mtime time.Time
	rep   *manifest.Report
}

// localReports is a host's reports/ on the primary, and who owns it
// (-1 when unknown).
type localReports struct {
	root     *os.Root
	uid, gid int
}

func (l localReports) write(name string, data []byte, mtime time.Time) error {
	return writeIn(l.root, name, data, mtime, l.uid, l.gid)
}

func pullHost(ctx context.Context, o Options, c *transport.Conn, d Dest, r *HostResult) error {
	p := &hostPull{c: c, d: d, r: r}
	found, err := p.findReports(ctx)
	if err != nil || !found {
		return err
	}
	theirs, err := p.readReport(ctx)
	if err != nil || theirs == nil {
		return err
	}
	chroot, err := status.OpenChroot(o.Root, r.Host)
	if err != nil {
		return err
	}
	defer chroot.Close()
	if oursAsNew(chroot, r.Host, reportTime(theirs.rep, theirs.mtime)) {
		r.Note = "the primary's report is as new"
		return nil
	}
	dst, err := openLocalReports(chroot)
	if err != nil {
		return err
	}
	defer dst.root.Close()

	// The log first, then the report that names it, as the agent does.
	if err := p.pullLog(ctx, dst, theirs.rep.Log, theirs.mtime); err != nil {
		return err
	}
	if err := dst.write("status.json", theirs.data, theirs.mtime); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	r.Files++
	r.Bytes += int64(len(theirs.data))
	r.Changed = true
	return nil
}

func (p *hostPull) remote(rel string) string { return path.Join(p.d.Root, p.r.Host, rel) }

// findReports checks the host's reports/ on the mirror, a directory, and
// learns its owner; false (with a note) when there is none.
func (p *hostPull) findReports(ctx context.Context) (bool, error) {
	rfi, err := p.c.Lstat(ctx, p.remote(manifest.ReportsDir))
	if transport.IsNotExist(err) {
		p.r.Note = "no reports/ on the mirror"
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !rfi.IsDir() {
		return false, fmt.Errorf("%s on the mirror is not a directory", p.remote(manifest.ReportsDir))
	}
	p.uid, _ = transport.Owner(rfi)
	return true, nil
}

// owned accepts a regular file of the mirror the host's user owns.
func (p *hostPull) owned(fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if u, _ := transport.Owner(fi); u != p.uid || p.uid < 0 {
		return fmt.Errorf("owned by uid %d, not by the host's user (uid %d, the owner of reports/): refusing a file the host did not write", u, p.uid)
	}
	return nil
}

// readReport reads and parses the mirror's report of the host; nil (with
// a note) when there is none.
func (p *hostPull) readReport(ctx context.Context) (*theirReport, error) {
	data, fi, err := p.c.ReadOwned(ctx, p.remote(manifest.StatusFile), status.MaxReportSize, p.owned)
	if transport.IsNotExist(err) {
		p.r.Note = "no report on the mirror"
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("the mirror's report: %w", err)
	}
	rep, err := status.ParseReport(data, p.r.Host)
	if err != nil {
		return nil, fmt.Errorf("the mirror's report: %w", err)
	}
	return &theirReport{data: data, mtime: fi.ModTime(), rep: rep}, nil
}

// oursAsNew says whether the primary's report of host is at least as new
// as theirs (false when it has none it can read).
func oursAsNew(chroot *os.Root, host string, theirs time.Time) bool {
	ours, err := status.ReadReport(chroot, host)
	if err != nil {
		return false
	}
	mt := time.Time{}
	if st, err := chroot.Lstat(manifest.StatusFile); err == nil {
		mt = st.ModTime()
	}
	return !theirs.After(reportTime(ours, mt))
}

// openLocalReports opens the primary's reports/ of a chroot and learns
// its owner.
func openLocalReports(chroot *os.Root) (localReports, error) {
	rr, err := openReports(chroot)
	if err != nil {
		return localReports{}, err
	}
	dst, err := rr.Lstat(".")
	if err != nil {
		rr.Close()
		return localReports{}, err
	}
	l := localReports{root: rr, uid: -1, gid: -1}
	if st, ok := statOwner(dst); ok {
		l.uid, l.gid = st[0], st[1]
	}
	return l, nil
}

// pullLog copies the log a report names (none: nothing to do), after
// checking it has the name of a log the agent writes.
func (p *hostPull) pullLog(ctx context.Context, dst localReports, name string, mtime time.Time) error {
	if name == "" {
		return nil
	}
	if !logNameRE.MatchString(name) {
		return fmt.Errorf("the mirror's report names the log %q, which is not a log name the agent writes", name)
	}
	log, _, err := p.c.ReadOwned(ctx, p.remote(manifest.LogsDir+"/"+name), MaxLogSize, p.owned)
	switch {
	case transport.IsNotExist(err):
		p.r.Note = "the report's log is not on the mirror"
		return nil
	case err != nil:
		return fmt.Errorf("the mirror's log %s: %w", name, err)
	}
	if err := dst.root.Mkdir("logs", 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := dst.write("logs/"+name, log, mtime); err != nil {
		return fmt.Errorf("writing the log: %w", err)
	}
	p.r.Files++
	p.r.Bytes += int64(len(log))
	return nil
}

// reportTime is when a report was last true: its finishedAt, or for an
// unchanged report the mtime its heartbeat moves (as bento status reads it).
func reportTime(r *manifest.Report, mtime time.Time) time.Time {
	t := r.FinishedAt
	if t.IsZero() {
		t = r.StartedAt
	}
	if r.Result == manifest.ResultUnchanged && mtime.After(t) {
		t = mtime
	}
	return t
}

// openReports opens the primary's reports/ of a chroot, a directory and
// never a symlink (the chroot is root's; reports/ is the host's).
func openReports(chroot *os.Root) (*os.Root, error) {
	st, err := chroot.Lstat(manifest.ReportsDir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := chroot.Mkdir(manifest.ReportsDir, 0o755); err != nil {
			return nil, err
		}
		st, err = chroot.Lstat(manifest.ReportsDir)
	}
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("the primary's %s is not a directory", manifest.ReportsDir)
	}
	return chroot.OpenRoot(manifest.ReportsDir)
}

// writeIn writes name inside r by a temporary file and a rename, both
// inside the root (a symlink planted at name is replaced, not followed),
// owned by the host's user like what the agent writes there, with mtime.
func writeIn(r *os.Root, name string, data []byte, mtime time.Time, uid, gid int) error {
	dir, base := path.Split(name)
	tmp := fmt.Sprintf("%s.%s.pull-%08x", dir, base, rand.Uint32())
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		f.Close()
		r.Remove(tmp)
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if uid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return fail(err)
		}
	}
	if err := f.Close(); err != nil {
		r.Remove(tmp)
		return err
	}
	if err := r.Chtimes(tmp, mtime, mtime); err != nil {
		r.Remove(tmp)
		return err
	}
	if err := r.Rename(tmp, name); err != nil {
		r.Remove(tmp)
		return err
	}
	return nil
}
