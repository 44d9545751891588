package publish

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/bento-nix/bento/manifest"
)

// stage writes what a new version needs and the chroot lacks under
// temporary names: the secrets beside secrets/<version>, new contents
// into the pool.
func (p *Publisher) stage(ctx context.Context, j *hostJob, x *Extra, entries []Entry, have map[string]bool) error {
	if x != nil {
		s, err := p.writeExtra(ctx, j.hostDir, j.m.Version, x)
		if err != nil {
			return fmt.Errorf("secrets: %w", err)
		}
		j.stages = append(j.stages, s)
	}
	seenSum := map[string]bool{}
	for _, e := range entries {
		if seenSum[e.SHA256] {
			continue
		}
		seenSum[e.SHA256] = true
		// Named by the live manifest, so in the chroot, unless hands or a
		// damaged disk removed it: a new publication checks (one lstat)
		// and links it again rather than publish a manifest naming a
		// missing object.
		if have[e.SHA256] && objectPresent(j.hostDir, e.SHA256) {
			j.res.Linked++
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := p.stageObject(j, e); err != nil {
			return err
		}
	}
	return nil
}

// stageObject makes sure the pool will hold e's content, writing it when
// this job is the first to need it.
func (p *Publisher) stageObject(j *hostJob, e Entry) error {
	o, mine := p.objectFor(e.SHA256, e.Size)
	j.objs = append(j.objs, o)
	if !mine {
		j.res.Shared++
		return nil
	}
	n, err := p.ready(o, e.Src)
	if err != nil {
		o.err = fmt.Errorf("%s: %w", e.Path, err)
		return o.err
	}
	if n > 0 {
		j.res.Copied++
		j.res.BytesWritten += n
	} else {
		j.res.Shared++
	}
	return nil
}

// ensureLayout creates or repairs the host's directories, writing nothing
// when they are already right: <host> and objects/ owned by root (when
// root) and 0755, reports/ owned by the host's user.
func (p *Publisher) ensureLayout(hostDir string, acct *account) error {
	if err := p.ensureDir(hostDir, 0, 0, p.asRoot); err != nil {
		return err
	}
	if obj := filepath.Join(hostDir, manifest.ObjectsDir); exists(obj) {
		if err := p.ensureDir(obj, 0, 0, p.asRoot); err != nil {
			return err
		}
	}
	rep := filepath.Join(hostDir, manifest.ReportsDir)
	if acct != nil {
		return p.ensureDir(rep, acct.uid, acct.gid, true)
	}
	return p.ensureDir(rep, 0, 0, false)
}

// ensureDir makes d a directory with mode 0755, owned by uid:gid when own.
// An existing directory keeps its content.
func (p *Publisher) ensureDir(d string, uid, gid int, own bool) error {
	fi, err := lstatOrMkdir(d, 0o755)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory (%s); remove it", d, fi.Mode().Type())
	}
	if fi.Mode().Perm() != 0o755 {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	if own {
		return chownTo(d, fi, uid, gid)
	}
	return nil
}

// lstatOrMkdir stats d, making it first (mode perm) when it is missing.
func lstatOrMkdir(d string, perm fs.FileMode) (fs.FileInfo, error) {
	fi, err := os.Lstat(d)
	if !errors.Is(err, fs.ErrNotExist) {
		return fi, err
	}
	if err := os.Mkdir(d, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	return os.Lstat(d)
}

// chownTo gives d (fi its Lstat) to uid:gid, unless it is theirs already.
func chownTo(d string, fi fs.FileInfo, uid, gid int) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) == uid && int(st.Gid) == gid {
		return nil
	}
	return os.Lchown(d, uid, gid)
}

// staged is a directory written completely under a temporary name.
type staged struct {
	tmp, final string
	// madeParent: the parent was created for it, and goes if it is discarded.
	madeParent bool
}

// commit renames the directory into place (Publish syncs afterwards).
func (s *staged) commit() error {
	if s.tmp == "" {
		return nil
	}
	if err := os.Rename(s.tmp, s.final); err != nil {
		return err
	}
	s.tmp, s.madeParent = "", false
	return nil
}

// discard removes what commit did not put in place.
func (s *staged) discard() {
	if s.tmp != "" {
		removeAll(s.tmp)
		s.tmp = ""
	}
	if s.madeParent {
		os.Remove(filepath.Dir(s.final))
		s.madeParent = false
	}
}

// ErrChanged is returned (wrapped) when a file changed between hashing and
// copying: its manifest line would lie.
var ErrChanged = errors.New("changed while being published; run bento deploy again")

// writeExtra writes the extra files of a new version under a temporary
// name beside secrets/<version>; commit renames it into place.
func (p *Publisher) writeExtra(ctx context.Context, hostDir, version string, x *Extra) (*staged, error) {
	base := filepath.Join(hostDir, manifest.SecretsDir)
	s := &staged{final: filepath.Join(base, version)}
	if _, err := os.Lstat(base); errors.Is(err, fs.ErrNotExist) {
		s.madeParent = true
	}
	if err := p.ensureDir(base, 0, 0, p.asRoot); err != nil {
		s.discard()
		return nil, err
	}
	if fi, err := os.Lstat(s.final); err == nil && fi.IsDir() {
		return s, nil
	}
	tmp, err := os.MkdirTemp(base, ".tmp-"+version+"-")
	if err != nil {
		s.discard()
		return nil, err
	}
	s.tmp = tmp
	if err := x.Write(ctx, tmp); err != nil {
		s.discard()
		return nil, err
	}
	return s, nil
}

// umask reads the process's umask without changing it (syscall.Umask
// would, racing with other goroutines); 0o777 (chmod everything) when
// unknown.
func umask() int {
	data, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "Umask:"); ok {
				if n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 32); err == nil {
					return int(n)
				}
			}
		}
	}
	return 0o777
}
