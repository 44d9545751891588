package secrets

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/proc"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
)

// StoreDir is the Nix store: no secret is ever installed below it.
const StoreDir = "/nix/store"

// DefaultRestartCommand restarts a unit only if it is running, so a
// secret installed before the switch never starts a unit early.
var DefaultRestartCommand = []string{"systemctl", "try-restart"}

// Installed is what the agent put at a secret's path.
type Installed struct {
	Path  string `json:"path"`
	Owner string `json:"owner"`
	Group string `json:"group"`
	Mode  string `json:"mode"`
	// Published is the sha256 of the published file (the ciphertext of
	// an .age secret).
	Published string `json:"published"`
	// Content is the sha256 of what was written at Path, to notice a file
	// that was changed or lost (/run is emptied at boot).
	Content string `json:"content"`
}

// State is what is installed, by secret name. The agent keeps it in its
// state directory between ticks.
type State map[string]Installed

// maxStateFile bounds installed.json: a few hundred bytes per secret.
const maxStateFile = 4 << 20

// LoadState reads a state file; a missing one is an empty state. A damaged
// one (not a regular file, over the size cap, not JSON) is moved aside as
// <file>.corrupt-<time> and an empty state returned, with a note saying so
// for the report: every secret is then installed again, which heals it.
func LoadState(file string) (st State, note string, err error) {
	_, note, err = statefile.Load(file, maxStateFile, time.Now(), func(b []byte) error {
		st = State{}
		return json.Unmarshal(b, &st)
	})
	if err != nil {
		return nil, "", fmt.Errorf("secrets state: %w", err)
	}
	if note != "" || st == nil {
		st = State{}
	}
	return st, note, nil
}

// Save writes the state file atomically, readable by root only.
func (s State) Save(file string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(file, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("secrets state: %w", err)
	}
	return nil
}

// Restarter restarts one unit.
type Restarter interface {
	Restart(ctx context.Context, unit string) error
}

// Command restarts a unit by running the command with the unit's name
// appended; DefaultRestartCommand when empty.
type Command []string

// Restart runs the command.
func (c Command) Restart(ctx context.Context, unit string) error {
	argv := []string(c)
	if len(argv) == 0 {
		argv = DefaultRestartCommand
	}
	// The unit manager's own output explains a failure; the error quotes
	// its last lines.
	_, err := proc.Run(ctx, proc.Cmd{Argv: append(argv[:len(argv):len(argv)], unit), Combined: true, TailBytes: 4 << 10})
	return err
}

// Installer puts staged secrets in place on the host.
type Installer struct {
	// Restarter restarts units; Command(DefaultRestartCommand) when nil.
	Restarter Restarter
	// AgeIdentity is the private key .age secrets are decrypted with (the
	// host's SSH key, usually the agent's identityFile).
	AgeIdentity string
	// Age is the age binary; "age" from PATH when empty.
	Age string
	// Log receives one line per secret installed or removed (name and
	// path, never content); nil discards.
	Log *slog.Logger
}

// Outcome is what one Install did.
type Outcome struct {
	// State is what is installed now; save it for the next Install.
	State State
	// Errors are one-line reasons by secret name; the other secrets were
	// installed. A failed secret keeps what was installed before.
	Errors map[string]string
	// Changed are the secrets written this time (new, changed or repaired).
	Changed []string
	// Removed are the secrets no longer published, whose files were removed.
	Removed []string
	// Units are the units the changed secrets ask to restart.
	Units []string
	// Note says that a damaged state file was moved aside ("" if not).
	Note string

	// unitsOf maps each unit to the changed secrets that listed it.
	unitsOf map[string][]string
}

// want is a Spec resolved on this host.
type want struct {
	path       string
	uid, gid   int
	mode       fs.FileMode
	spec       Spec
	owner, grp string
}

// Install makes the host hold exactly the secrets in files, read from dir
// (Store.Path of the version), as specs say. prev is the previous Outcome's
// State. It is idempotent: a secret already in place (same content, owner,
// group, mode) is not touched, so calling it on every tick repairs what a
// reboot or a hand emptied, and calling it again after a switch installs
// secrets whose owner the switch created. The error is non-nil only when
// nothing could be decided (bad arguments); per-secret failures are in
// Outcome.Errors.
func (i *Installer) Install(ctx context.Context, dir string, files []manifest.File, specs map[string]Spec, prev State) (Outcome, error) {
	log := i.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := Outcome{State: State{}, Errors: map[string]string{}, unitsOf: map[string][]string{}}
	published, err := publishedNames(files)
	if err != nil {
		return o, err
	}
	run := installRun{i: i, dir: dir, log: log, o: &o, paths: map[string]string{},
		ids: &idCache{users: map[string]*user.User{}, groups: map[string]*user.Group{}}}
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return o, err
		}
		run.one(ctx, f, specs, prev)
	}
	run.removeGone(prev, published)
	for _, name := range sortedMissing(specs, published) {
		o.Errors[name] = fmt.Sprintf("services.bento.secrets.%s is declared, but the server publishes no such secret: add secrets/<host>/%s on the server", name, name)
	}
	for u := range o.unitsOf {
		o.Units = append(o.Units, u)
	}
	sort.Strings(o.Units)
	return o, nil
}

// publishedNames refuses a manifest whose secrets cannot be told apart:
// nothing is installed from it.
func publishedNames(files []manifest.File) (map[string]bool, error) {
	published := map[string]bool{}
	for _, f := range files {
		name := Name(f.Path)
		if err := ValidateName(name); err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		if published[name] {
			return nil, fmt.Errorf("manifest: secret %s is published twice", name)
		}
		published[name] = true
	}
	return published, nil
}

// sortedMissing are the declared secrets the server does not publish.
func sortedMissing(specs map[string]Spec, published map[string]bool) []string {
	var missing []string
	for name := range specs {
		if !published[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	return missing
}

// installRun is one Install's progress: what it decided so far.
type installRun struct {
	i     *Installer
	dir   string
	log   *slog.Logger
	o     *Outcome
	paths map[string]string // installed path → secret name, to refuse two on one path
	ids   *idCache
}

// one installs a published secret, or records why not; a failed secret
// keeps what was installed before.
func (r *installRun) one(ctx context.Context, f manifest.File, specs map[string]Spec, prev State) {
	o := r.o
	name := Name(f.Path)
	old, had := prev[name]
	fail := func(err error) {
		o.Errors[name] = err.Error()
		if had {
			o.State[name] = old
		}
		r.log.Warn("secret not installed", "secret", name, "err", err)
	}
	spec, w, err := r.claim(name, f, specs)
	if err != nil {
		fail(err)
		return
	}
	installed := func(content string) Installed {
		return Installed{Path: w.path, Owner: w.owner, Group: w.grp, Mode: fmt.Sprintf("%04o", w.mode), Published: f.SHA256, Content: content}
	}
	if had && upToDate(old, f, w) {
		o.State[name] = installed(old.Content)
		return
	}
	content, err := r.i.write(ctx, filepath.Join(r.dir, f.Path), f, w)
	if err != nil {
		fail(fmt.Errorf("secret %s: %w", name, err))
		return
	}
	o.State[name] = installed(content)
	r.changed(name, spec, w)
	if had && old.Path != w.path {
		if err := removeInstalled(old.Path); err != nil {
			o.Errors[name] = fmt.Sprintf("secret %s: installed at %s, but removing the old copy at %s failed: %v", name, w.path, old.Path, err)
		}
	}
}

// claim finds and checks the Spec of the published secret name (file f)
// and takes its path for it.
func (r *installRun) claim(name string, f manifest.File, specs map[string]Spec) (Spec, want, error) {
	spec, ok := specs[name]
	if !ok {
		return spec, want{}, fmt.Errorf("the server publishes secret %s but this host declares no services.bento.secrets.%s: declare it (path, owner, group, mode) or remove secrets/<host>/%s on the server", name, name, f.Path)
	}
	w, err := resolve(name, spec, r.ids)
	if err != nil {
		return spec, w, err
	}
	if other, dup := r.paths[w.path]; dup {
		return spec, w, fmt.Errorf("secret %s: path %s is also secret %s's: give each secret its own path", name, w.path, other)
	}
	r.paths[w.path] = name
	return spec, w, nil
}

// upToDate says whether old, what was installed, is still f installed as
// w wants.
func upToDate(old Installed, f manifest.File, w want) bool {
	return old.Published == f.SHA256 && old.Path == w.path && inPlace(w, old.Content)
}

// changed records that secret name was installed anew, so that its units
// restart.
func (r *installRun) changed(name string, spec Spec, w want) {
	r.o.Changed = append(r.o.Changed, name)
	for _, u := range spec.RestartUnits {
		r.o.unitsOf[u] = append(r.o.unitsOf[u], name)
	}
	r.log.Info("secret installed", "secret", name, "path", w.path, "owner", w.owner, "group", w.grp, "mode", fmt.Sprintf("%04o", w.mode))
}

// removeGone removes the secrets no longer published; one that cannot be
// removed stays in the state, so the next Install tries again.
func (r *installRun) removeGone(prev State, published map[string]bool) {
	var gone []string
	for name := range prev {
		if !published[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		old := prev[name]
		if err := removeInstalled(old.Path); err != nil {
			r.o.Errors[name] = fmt.Sprintf("secret %s is no longer published, but removing %s failed: %v", name, old.Path, err)
			r.o.State[name] = old
			continue
		}
		r.o.Removed = append(r.o.Removed, name)
		r.log.Info("secret removed", "secret", name, "path", old.Path)
	}
}

// Restart restarts the units of the secrets Install changed (call it after
// the switch, so units the new system defines exist) and records each
// failure in o.Errors under the secrets that listed the unit.
func (i *Installer) Restart(ctx context.Context, o *Outcome) {
	r := i.Restarter
	if r == nil {
		r = Command(DefaultRestartCommand)
	}
	for _, u := range o.Units {
		err := validUnit(u)
		if err == nil {
			err = r.Restart(ctx, u)
		}
		if err == nil {
			continue
		}
		if i.Log != nil {
			i.Log.Warn("restarting a unit for a changed secret failed", "unit", u, "err", err)
		}
		for _, name := range o.unitsOf[u] {
			msg := fmt.Sprintf("secret %s installed, but restarting %s failed: %v", name, u, err)
			if prev, ok := o.Errors[name]; ok {
				msg = prev + "; " + msg
			}
			o.Errors[name] = msg
		}
	}
}

var unitRE = regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]+$`)

func validUnit(u string) error {
	if !unitRE.MatchString(u) || strings.HasPrefix(u, "-") {
		return fmt.Errorf("invalid unit name %q in restartUnits", u)
	}
	return nil
}

// resolve checks a secret's Spec against this host: path, mode, owner, group.
func resolve(name string, s Spec, ids *idCache) (want, error) {
	opt := "services.bento.secrets." + name
	w := want{spec: s, path: s.Path}
	if err := checkPath(name, opt, s.Path); err != nil {
		return w, err
	}
	mode, err := parseMode(name, opt, s.Mode)
	if err != nil {
		return w, err
	}
	w.mode = mode
	err = ids.resolveOwner(&w, name, opt)
	return w, err
}

// checkPath checks where secret name is to be installed (option opt).
func checkPath(name, opt, p string) error {
	if p == "" {
		return fmt.Errorf("secret %s: %s.path is empty: set it to an absolute path", name, opt)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
		return fmt.Errorf("secret %s: %s.path %q must be an absolute, clean file path", name, opt, p)
	}
	if inStore(p) {
		return fmt.Errorf("secret %s: %s.path %s is in the Nix store, which every user can read: pick a path such as /run/bento-secrets/%s", name, opt, p, name)
	}
	return nil
}

// parseMode parses secret name's mode (option opt), 0400 when unset.
func parseMode(name, opt, mode string) (fs.FileMode, error) {
	octal := mode
	if octal == "" {
		octal = "0400"
	}
	m, err := strconv.ParseUint(octal, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("secret %s: %s.mode %q is not an octal permission such as 0400", name, opt, mode)
	}
	return fs.FileMode(m), nil
}

// resolveOwner sets w's owner and group (root and the owner's group when
// unset) and their ids on this host.
func (ids *idCache) resolveOwner(w *want, name, opt string) error {
	s := w.spec
	w.owner = s.Owner
	if w.owner == "" {
		w.owner = "root"
	}
	u, err := ids.user(w.owner)
	if err != nil {
		return fmt.Errorf("secret %s: owner %q: no such user on this host (create it, or fix %s.owner)", name, w.owner, opt)
	}
	w.uid, _ = strconv.Atoi(u.Uid)
	w.grp = s.Group
	if w.grp == "" {
		w.gid, _ = strconv.Atoi(u.Gid)
		w.grp = u.Gid
		if g, err := user.LookupGroupId(u.Gid); err == nil {
			w.grp = g.Name
		}
		return nil
	}
	g, err := ids.group(w.grp)
	if err != nil {
		return fmt.Errorf("secret %s: group %q: no such group on this host (create it, or fix %s.group)", name, w.grp, opt)
	}
	w.gid, _ = strconv.Atoi(g.Gid)
	return nil
}

// idCache remembers lookups for one Install: each one reads /etc/passwd
// or /etc/group, and many secrets share an owner.
type idCache struct {
	users  map[string]*user.User
	groups map[string]*user.Group
}

func (c *idCache) user(name string) (*user.User, error) {
	if u, ok := c.users[name]; ok {
		return u, nil
	}
	u, err := lookupUser(name)
	if err == nil {
		c.users[name] = u
	}
	return u, err
}

func (c *idCache) group(name string) (*user.Group, error) {
	if g, ok := c.groups[name]; ok {
		return g, nil
	}
	g, err := lookupGroup(name)
	if err == nil {
		c.groups[name] = g
	}
	return g, err
}

func lookupUser(name string) (*user.User, error) {
	if _, err := strconv.Atoi(name); err == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
		// A numeric owner without a passwd entry is still an owner.
		return &user.User{Uid: name, Gid: name, Username: name}, nil
	}
	return user.Lookup(name)
}

func lookupGroup(name string) (*user.Group, error) {
	if _, err := strconv.Atoi(name); err == nil {
		return &user.Group{Gid: name, Name: name}, nil
	}
	return user.LookupGroup(name)
}

// inStore tells whether p, or what its existing parent resolves to, lies
// in the Nix store.
func inStore(p string) bool {
	if within(p, StoreDir) {
		return true
	}
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		if real, err := filepath.EvalSymlinks(d); err == nil {
			return within(real, StoreDir)
		}
		if d == "/" {
			return false
		}
	}
}

// inPlace tells whether w.path holds content with w's owner, group and mode.
func inPlace(w want, content string) bool {
	dir, err := openParent(w.path, false)
	if err != nil {
		return false
	}
	defer dir.Close()
	fd, err := unix.Openat(int(dir.Fd()), filepath.Base(w.path), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(fd), w.path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != w.mode {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != w.uid || int(st.Gid) != w.gid {
		return false
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false
	}
	return hex.EncodeToString(h.Sum(nil)) == content
}

// ErrSymlinkInPath is returned (wrapped) when a directory on the way to a
// secret's path is a symlink.
var ErrSymlinkInPath = errors.New("a secret is never installed through a symlink")

// openParent opens the directory holding p (absolute and clean), walking
// from / one component at a time with O_NOFOLLOW and, with create, making
// missing directories (0751) on the way. Everything the agent then does
// at p is relative to that handle: a symlink anywhere on the path, planted
// by whoever can write one of its directories, is refused instead of
// followed, and a directory swapped for one after the walk cannot redirect
// a write of root's.
func openParent(p string, create bool) (*os.File, error) {
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: "/", Err: err}
	}
	at := "/"
	for _, comp := range strings.Split(strings.Trim(filepath.Dir(p), "/"), "/") {
		if comp == "" {
			continue
		}
		next := filepath.Join(at, comp)
		nfd, err := openChild(fd, comp, create)
		if err != nil {
			err = walkError(fd, comp, at, next, err)
			unix.Close(fd)
			return nil, err
		}
		unix.Close(fd)
		fd, at = nfd, next
	}
	return os.NewFile(uintptr(fd), at), nil
}

// openChild opens the directory comp in the directory fd, not following
// a symlink, and with create makes it (0751) when missing.
func openChild(fd int, comp string, create bool) (int, error) {
	nfd, err := unix.Openat(fd, comp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err = unix.Mkdirat(fd, comp, 0o751); err == nil || errors.Is(err, unix.EEXIST) {
			nfd, err = unix.Openat(fd, comp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
	}
	return nfd, err
}

// walkError is openParent's error when comp (next) in the directory fd
// (at) could not be opened with err: a symlink there is ErrSymlinkInPath.
func walkError(fd int, comp, at, next string, err error) error {
	var st unix.Stat_t
	if serr := unix.Fstatat(fd, comp, &st, unix.AT_SYMLINK_NOFOLLOW); serr == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%s is a symlink: %w (whoever can write %s could point it anywhere); set the path to where it leads, or make %s a directory", next, ErrSymlinkInPath, at, next)
	}
	return &fs.PathError{Op: "open", Path: next, Err: err}
}

// write installs the staged file src at w.path atomically: a temporary file
// beside it, owned and moded before anything is written into it, synced,
// renamed over the path, all relative to a handle on the parent directory
// (openParent). It returns the sha256 of what it wrote.
func (i *Installer) write(ctx context.Context, src string, f manifest.File, w want) (string, error) {
	// The staged copy was verified when downloaded; check again so a
	// tampered state directory cannot slip in other content.
	if size, sum, err := hashFile(src); err != nil {
		return "", fmt.Errorf("staged copy: %w", err)
	} else if size != f.Size || sum != f.SHA256 {
		return "", errors.New("staged copy differs from the manifest: it is downloaded again at the next update")
	}
	dir, err := openParent(w.path, true)
	if err != nil {
		return "", err
	}
	defer dir.Close()
	dfd := int(dir.Fd())
	base := filepath.Base(w.path)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return "", fmt.Errorf("%s is a directory: remove it or pick another path", w.path)
	}
	tmp, tmpName, err := createTemp(dir, base)
	if err != nil {
		return "", err
	}
	sum, err := i.fill(ctx, tmp, src, f, w)
	if err != nil {
		tmp.Close()
		unix.Unlinkat(dfd, tmpName, 0)
		return "", err
	}
	// rename(2) replaces a symlink at the path itself, never its target.
	if err := unix.Renameat(dfd, tmpName, dfd, base); err != nil {
		unix.Unlinkat(dfd, tmpName, 0)
		return "", &fs.PathError{Op: "rename", Path: w.path, Err: err}
	}
	return sum, dir.Sync()
}

// createTemp makes a new, empty, private file beside base in dir.
func createTemp(dir *os.File, base string) (*os.File, string, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, "", err
	}
	name := "." + base + ".bento-" + hex.EncodeToString(rnd[:])
	// O_EXCL|O_NOFOLLOW: a name planted in the meantime is never opened.
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, "", &fs.PathError{Op: "create", Path: filepath.Join(dir.Name(), name), Err: err}
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir.Name(), name)), name, nil
}

// fill gives tmp its owner and mode, then the secret's content (decrypted
// when it is age-encrypted), synced and closed; it returns the content's
// sha256.
func (i *Installer) fill(ctx context.Context, tmp *os.File, src string, f manifest.File, w want) (string, error) {
	// Owner and mode first: the content must never be readable by anyone
	// else, even for a moment.
	if err := tmp.Chown(w.uid, w.gid); err != nil {
		return "", err
	}
	if err := tmp.Chmod(w.mode); err != nil {
		return "", err
	}
	h := sha256.New()
	var err error
	if Encrypted(f.Path) {
		err = i.decrypt(ctx, src, io.MultiWriter(tmp, h))
	} else {
		err = copyFrom(src, io.MultiWriter(tmp, h))
	}
	if err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFrom(src string, w io.Writer) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = io.Copy(w, in)
	return err
}

// decrypt runs age -d with the host's identity. Only age's standard error
// (its own messages, never plaintext) goes into an error.
func (i *Installer) decrypt(ctx context.Context, src string, w io.Writer) error {
	if i.AgeIdentity == "" {
		return errors.New("it is age-encrypted, but the agent has no identity to decrypt it with (set identityFile)")
	}
	bin := i.Age
	if bin == "" {
		bin = "age"
	}
	// Standard output is the plaintext: it goes to w only, never into the
	// tail an error quotes, which holds age's own messages.
	_, err := proc.Run(ctx, proc.Cmd{Argv: []string{bin, "-d", "-i", i.AgeIdentity, src}, Stdout: w, TailBytes: 4 << 10})
	if errors.Is(err, proc.ErrNotFound) {
		return fmt.Errorf("it is age-encrypted, but %s is not installed (add pkgs.age to the agent's path)", bin)
	}
	if err != nil {
		return fmt.Errorf("%w (was it encrypted to this host's key? age -R /etc/ssh/ssh_host_ed25519_key.pub)", err)
	}
	return nil
}

// removeInstalled removes a secret bento installed; a file already gone is
// fine, anything but a regular file is left alone, and so is a path through
// a symlink (openParent).
func removeInstalled(p string) error {
	dir, err := openParent(p, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer dir.Close()
	dfd, base := int(dir.Fd()), filepath.Base(p)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s is no longer a regular file (%s): left alone", p, fileType(st.Mode))
	}
	if err := unix.Unlinkat(dfd, base, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: p, Err: err}
	}
	return dir.Sync()
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "a symlink"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	}
	return "not a regular file"
}
