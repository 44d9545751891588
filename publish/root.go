package publish

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// CheckRoot checks the chroot root before anything is written: it must be
// a directory the caller can write (created when create is set and it is
// missing). Whether sshd would accept chroots under it is returned as
// warnings: sshd's ChrootDirectory wants the chroot and every parent owned
// by root and not writable by group or others.
func CheckRoot(root string, create bool) (warnings []string, err error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("chroot root %s: %w", root, err)
	}
	missing, err := ensureRoot(abs, create)
	if err != nil {
		return nil, err
	}
	if missing {
		return []string{fmt.Sprintf("chroot root %s does not exist yet; a deploy creates it", abs)}, nil
	}
	if create {
		if err := syscall.Access(abs, 2|1); err != nil { // W_OK|X_OK
			return nil, fmt.Errorf("chroot root %s is not writable by you (uid %d): %v; run bento deploy as root, or pick a directory you own with --chroot-root", abs, os.Geteuid(), err)
		}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		real = abs
	}
	if problems := sshdProblems(real); len(problems) > 0 {
		warnings = append(warnings, fmt.Sprintf("sshd will refuse ChrootDirectory for the hosts under %s: %s; in production use a directory whose every parent is root-owned and not writable by group or others, such as /home/chroot", real, strings.Join(problems, ", ")))
	}
	return warnings, nil
}

// ensureRoot checks that the chroot root abs is a directory, creating it
// when it is missing and create is set; missing: it is, and create is not.
func ensureRoot(abs string, create bool) (missing bool, err error) {
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !create {
			return true, nil
		}
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return false, fmt.Errorf("chroot root %s: cannot create it: %w; create it (root-owned, mode 0755) or pick another --chroot-root", abs, unwrapPath(err))
		}
	case errors.Is(err, syscall.ENOTDIR):
		return false, fmt.Errorf("chroot root %s: a parent of it is a file, not a directory; pick another --chroot-root", abs)
	case err != nil:
		return false, fmt.Errorf("chroot root %s: %w", abs, err)
	case !fi.IsDir():
		return false, fmt.Errorf("chroot root %s is a file, not a directory; pick another --chroot-root (or BENTO_CHROOT_ROOT)", abs)
	}
	return false, nil
}

// sshdProblems lists what breaks sshd's ChrootDirectory ownership rule for
// dir and each of its parents.
func sshdProblems(dir string) []string {
	var out []string
	for d := dir; ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
				out = append(out, fmt.Sprintf("%s is owned by %s, not root", d, userName(int(st.Uid))))
			}
			if fi.Mode().Perm()&0o022 != 0 {
				out = append(out, fmt.Sprintf("%s is writable by group or others (mode %04o)", d, fi.Mode().Perm()|modeExtra(fi.Mode())))
			}
		}
		if d == filepath.Dir(d) {
			return out
		}
	}
}

func modeExtra(m fs.FileMode) fs.FileMode {
	if m&fs.ModeSticky != 0 {
		return 0o1000
	}
	return 0
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return "uid " + strconv.Itoa(uid)
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// account is a host's SFTP user on the server.
type account struct {
	name     string
	uid, gid int
}

// lookupAccount finds the SFTP user a host's chroot belongs to.
func lookupAccount(name, hostDir string) (account, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return account{}, fmt.Errorf("SFTP user %q does not exist on this server: add it with services.bento-server.hosts (or: useradd --system --no-create-home --home-dir %s --shell /usr/sbin/nologin %s)", name, hostDir, name)
	}
	if err != nil {
		// Not "no such user": the lookup itself failed (NSS, an unreadable
		// /etc/passwd); telling the operator to add the user would mislead.
		return account{}, fmt.Errorf("looking up SFTP user %q: %w", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return account{}, fmt.Errorf("SFTP user %q: unexpected uid/gid %s/%s", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return account{}, fmt.Errorf("SFTP user %q is root: a host must log in as an unprivileged user of its own; set services.bento.user", name)
	}
	return account{name: name, uid: uid, gid: gid}, nil
}
