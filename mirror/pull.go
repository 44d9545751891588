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

func pullHost(ctx context.Context, o Options, c *transport.Conn, d Dest, r *HostResult) error {
	remote := func(rel string) string { return path.Join(d.Root, r.Host, rel) }
	rfi, err := c.Lstat(ctx, remote(manifest.ReportsDir))
	if transport.IsNotExist(err) {
		r.Note = "no reports/ on the mirror"
		return nil
	}
	if err != nil {
		return err
	}
	if !rfi.IsDir() {
		return fmt.Errorf("%s on the mirror is not a directory", remote(manifest.ReportsDir))
	}
	uid, _ := transport.Owner(rfi)
	owned := func(fi os.FileInfo) error {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
		}
		if u, _ := transport.Owner(fi); u != uid || uid < 0 {
			return fmt.Errorf("owned by uid %d, not by the host's user (uid %d, the owner of reports/): refusing a file the host did not write", u, uid)
		}
		return nil
	}
	data, fi, err := c.ReadOwned(ctx, remote(manifest.StatusFile), status.MaxReportSize, owned)
	if transport.IsNotExist(err) {
		r.Note = "no report on the mirror"
		return nil
	}
	if err != nil {
		return fmt.Errorf("the mirror's report: %w", err)
	}
	rep, err := status.ParseReport(data, r.Host)
	if err != nil {
		return fmt.Errorf("the mirror's report: %w", err)
	}
	theirs := reportTime(rep, fi.ModTime())

	chroot, err := status.OpenChroot(o.Root, r.Host)
	if err != nil {
		return err
	}
	defer chroot.Close()
	if ours, err := status.ReadReport(chroot, r.Host); err == nil {
		st, serr := chroot.Lstat(manifest.StatusFile)
		mt := time.Time{}
		if serr == nil {
			mt = st.ModTime()
		}
		if !theirs.After(reportTime(ours, mt)) {
			r.Note = "the primary's report is as new"
			return nil
		}
	}

	rr, err := openReports(chroot)
	if err != nil {
		return err
	}
	defer rr.Close()
	dst, err := rr.Lstat(".")
	if err != nil {
		return err
	}
	var luid, lgid = -1, -1
	if st, ok := statOwner(dst); ok {
		luid, lgid = st[0], st[1]
	}

	// The log first, then the report that names it, as the agent does.
	if rep.Log != "" {
		if !logNameRE.MatchString(rep.Log) {
			return fmt.Errorf("the mirror's report names the log %q, which is not a log name the agent writes", rep.Log)
		}
		log, _, err := c.ReadOwned(ctx, remote(manifest.LogsDir+"/"+rep.Log), MaxLogSize, owned)
		switch {
		case transport.IsNotExist(err):
			r.Note = "the report's log is not on the mirror"
		case err != nil:
			return fmt.Errorf("the mirror's log %s: %w", rep.Log, err)
		default:
			if err := rr.Mkdir("logs", 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := writeIn(rr, "logs/"+rep.Log, log, fi.ModTime(), luid, lgid); err != nil {
				return fmt.Errorf("writing the log: %w", err)
			}
			r.Files++
			r.Bytes += int64(len(log))
		}
	}
	if err := writeIn(rr, "status.json", data, fi.ModTime(), luid, lgid); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	r.Files++
	r.Bytes += int64(len(data))
	r.Changed = true
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
