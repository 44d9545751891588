// Package activate makes a built NixOS system the running one, the way
// nixos-rebuild does but without calling it: point the system profile at
// the toplevel (nix-env -p PROFILE --set PATH), then run
// PATH/bin/switch-to-configuration OP. It also rolls back to a recorded
// previous system, decides whether a reboot is needed and when, and
// confirms after a switch that the server is still reachable.
//
// The package records nothing about previous systems by itself: the caller
// (the agent) reads Current before switching, keeps it, and passes it to
// Rollback. That keeps the decision "what was good before" in one place.
package activate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/proc"
	"github.com/bento-nix/bento/nix"
)

// Paths are every system location activation touches. Tests point them
// into temporary directories; zero fields take the NixOS defaults.
type Paths struct {
	// Profile is the system profile; default /nix/var/nix/profiles/system.
	Profile string
	// CurrentSystem is the link to the running system; default /run/current-system.
	CurrentSystem string
	// BootedSystem is the link to the system the machine booted; default /run/booted-system.
	BootedSystem string
	// RebootCommand is run by Reboot; default ["systemctl", "reboot"].
	RebootCommand []string
}

// DefaultPaths are the locations on a NixOS machine.
func DefaultPaths() Paths {
	return Paths{
		Profile:       "/nix/var/nix/profiles/system",
		CurrentSystem: "/run/current-system",
		BootedSystem:  "/run/booted-system",
		RebootCommand: []string{"systemctl", "reboot"},
	}
}

// WithDefaults fills the zero fields of p from DefaultPaths.
func (p Paths) WithDefaults() Paths {
	d := DefaultPaths()
	if p.Profile == "" {
		p.Profile = d.Profile
	}
	if p.CurrentSystem == "" {
		p.CurrentSystem = d.CurrentSystem
	}
	if p.BootedSystem == "" {
		p.BootedSystem = d.BootedSystem
	}
	if len(p.RebootCommand) == 0 {
		p.RebootCommand = d.RebootCommand
	}
	return p
}

// Activator switches this machine between systems.
type Activator struct {
	// Nix runs nix-env; nil means nix from PATH.
	Nix   *nix.Runner
	Paths Paths
	// Env is added to the environment of switch-to-configuration and of
	// the reboot command.
	Env []string
	// Log receives the standard output and error of every command run,
	// plus one "bento:" line per step, so an uploaded log tells the story.
	// It is written from one goroutine at a time.
	Log io.Writer
}

// Operations accepted by Switch and Rollback, as switch-to-configuration
// names them.
const (
	OpSwitch = "switch"
	OpBoot   = "boot"
	OpTest   = "test"
)

// CheckOp returns a clear error unless op is switch, boot or test.
func CheckOp(op string) error {
	switch op {
	case OpSwitch, OpBoot, OpTest:
		return nil
	}
	return fmt.Errorf("operation %q is not supported: use switch, boot or test", op)
}

// Outcome says what Switch did to the machine, so the caller knows
// whether there is anything to roll back.
type Outcome string

const (
	// Untouched: Switch failed before changing anything (bad input, nix-env
	// refused): there is nothing to roll back.
	Untouched Outcome = "untouched"
	// Skipped: the machine already runs that system; nothing was done.
	Skipped Outcome = "skipped"
	// Switched: the profile was set (except for test) and
	// switch-to-configuration succeeded.
	Switched Outcome = "switched"
	// Failed: the profile was changed or switch-to-configuration ran and
	// failed: the machine may be half-way, roll back.
	Failed Outcome = "failed"
)

// NeedsRollback reports whether the machine may have changed although the
// switch failed.
func (o Outcome) NeedsRollback() bool { return o == Failed }

func (a *Activator) paths() Paths { return a.Paths.WithDefaults() }

func (a *Activator) runner() *nix.Runner {
	if a.Nix == nil {
		return &nix.Runner{}
	}
	return a.Nix
}

func (a *Activator) logf(format string, args ...any) {
	if a.Log != nil {
		fmt.Fprintf(a.Log, "bento: "+format+"\n", args...)
	}
}

// Current is the system the machine runs now: the store path the
// CurrentSystem link resolves to, "" when there is no such link.
func (a *Activator) Current() (string, error) {
	return resolveSystemLink(a.paths().CurrentSystem)
}

// Booted is the system the machine booted, "" when unknown.
func (a *Activator) Booted() (string, error) {
	return resolveSystemLink(a.paths().BootedSystem)
}

// ProfileTarget is the system the profile points at (what the next boot
// runs after switch or boot), "" when the profile does not exist yet.
func (a *Activator) ProfileTarget() (string, error) {
	return resolveSystemLink(a.paths().Profile)
}

func resolveSystemLink(link string) (string, error) {
	p, err := resolveLinks(link)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read system link %s: %w", link, err)
	}
	return p, nil
}

// resolveLinks follows a chain of symlinks starting at p and returns the
// first path that is not a link. Unlike filepath.EvalSymlinks it leaves
// the directories above alone, so a system keeps its /nix/store/… name
// even where /nix itself is a link or a bind mount.
func resolveLinks(p string) (string, error) {
	for range 40 {
		fi, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return filepath.Clean(p), nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", p)
}

// checkSystem refuses a path that cannot be activated before anything on
// the machine is touched: nix-env --set on a path missing from the store
// would even try to download it.
func checkSystem(toplevel string) error {
	if toplevel == "" || !filepath.IsAbs(toplevel) {
		return fmt.Errorf("system %q: not an absolute store path", toplevel)
	}
	stc := filepath.Join(toplevel, "bin", "switch-to-configuration")
	fi, err := os.Stat(stc)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, err2 := os.Stat(toplevel); errors.Is(err2, fs.ErrNotExist) {
			return fmt.Errorf("system %s does not exist: build or fetch it first", toplevel)
		}
		return fmt.Errorf("system %s has no bin/switch-to-configuration: it is not a NixOS system toplevel", toplevel)
	case err != nil:
		return fmt.Errorf("system %s: %w", toplevel, err)
	case fi.Mode()&0o111 == 0:
		return fmt.Errorf("system %s: bin/switch-to-configuration is not executable", toplevel)
	}
	return nil
}

// Switch makes toplevel the system, like nixos-rebuild OP: the profile is
// set to it (not for test), then toplevel/bin/switch-to-configuration OP
// runs; its exit status decides. When the machine already is in the
// requested state (for switch: running it and the profile on it; for test:
// running it) nothing is done and Skipped is returned. boot is never
// skipped: the running system says nothing about the boot loader.
//
// On error the Outcome tells whether anything changed (Failed) so that the
// caller rolls back to the system it recorded with Current beforehand.
//
// ctx is checked before the machine is touched; once nix-env or
// switch-to-configuration has started it runs to its end (Switch and
// Rollback detach them from ctx): a switch cut in half leaves the machine
// between two systems, worse than a late stop.
func (a *Activator) Switch(ctx context.Context, toplevel, op string) (Outcome, error) {
	if err := CheckOp(op); err != nil {
		return Untouched, err
	}
	toplevel = filepath.Clean(toplevel)
	if err := checkSystem(toplevel); err != nil {
		return Untouched, err
	}
	cur, prof, err := a.where()
	if err != nil {
		return Untouched, err
	}
	if alreadyIn(op, toplevel, cur, prof) {
		a.logf("%s already runs %s: nothing to %s", a.paths().CurrentSystem, toplevel, op)
		return Skipped, nil
	}
	if err := ctx.Err(); err != nil {
		return Untouched, err
	}
	if op != OpTest {
		if out, err := a.switchProfile(ctx, toplevel, prof); err != nil {
			return out, err
		}
	}
	a.logf("running %s/bin/switch-to-configuration %s", toplevel, op)
	if err := a.run(ctx, []string{filepath.Join(toplevel, "bin", "switch-to-configuration"), op}, true); err != nil {
		return Failed, fmt.Errorf("activate %s: %w", toplevel, err)
	}
	if op != OpBoot {
		a.checkCurrent(toplevel, op)
	}
	return Switched, nil
}

// where reads the running system and the profile's target: what Switch
// skips on, and what a failed profile change is judged against.
func (a *Activator) where() (cur, prof string, err error) {
	if cur, err = a.Current(); err != nil {
		return "", "", err
	}
	if prof, err = a.ProfileTarget(); err != nil {
		return "", "", err
	}
	return cur, prof, nil
}

// alreadyIn says whether the machine already is where op would put it.
// boot never is: the running system says nothing about the boot loader.
func alreadyIn(op, toplevel, cur, prof string) bool {
	switch op {
	case OpTest:
		return cur == toplevel
	case OpSwitch:
		return cur == toplevel && prof == toplevel
	}
	return false
}

// switchProfile points the profile at toplevel. nix-env replaces the
// link atomically, so on error it either moved or it did not: look
// rather than guess, so the caller knows whether to roll back.
func (a *Activator) switchProfile(ctx context.Context, toplevel, prof string) (Outcome, error) {
	err := a.setProfile(ctx, toplevel)
	if err == nil {
		return Switched, nil
	}
	if after, _ := a.ProfileTarget(); after != prof {
		return Failed, err
	}
	return Untouched, err
}

// checkCurrent warns when the system switched but CurrentSystem does not
// show it: not an error, but the next tick will not see it and will
// switch again. Most likely CurrentSystem is configured wrong.
func (a *Activator) checkCurrent(toplevel, op string) {
	if now, err := a.Current(); err == nil && now != toplevel {
		a.logf("warning: after switch-to-configuration %s, %s points at %q, not %s: check the current-system path", op, a.paths().CurrentSystem, now, toplevel)
	}
}

// Rollback returns to previous, the system the caller recorded with
// Current before Switch: the profile is set back to it (except for test)
// and previous/bin/switch-to-configuration OP runs. It sets the profile to
// that exact path rather than using nix-env --rollback, which would pick
// the next lower generation whatever it holds.
func (a *Activator) Rollback(ctx context.Context, previous, op string) error {
	if err := CheckOp(op); err != nil {
		return err
	}
	if previous == "" {
		return errors.New("roll back: no previous system was recorded (first installation?): nothing to roll back to")
	}
	previous = filepath.Clean(previous)
	if err := checkSystem(previous); err != nil {
		return fmt.Errorf("roll back: %w", err)
	}
	a.logf("rolling back to %s (%s)", previous, op)
	if op != OpTest {
		if err := a.setProfile(ctx, previous); err != nil {
			return fmt.Errorf("roll back: %w", err)
		}
	}
	if err := a.run(ctx, []string{filepath.Join(previous, "bin", "switch-to-configuration"), op}, true); err != nil {
		return fmt.Errorf("roll back to %s: %w", previous, err)
	}
	return nil
}

func (a *Activator) setProfile(ctx context.Context, toplevel string) error {
	profile := a.paths().Profile
	a.logf("setting profile %s to %s", profile, toplevel)
	if err := os.MkdirAll(filepath.Dir(profile), 0o755); err != nil {
		return fmt.Errorf("set profile %s: %w", profile, err)
	}
	_, err := a.runner().Run(ctx, nix.Cmd{
		Tool:     "nix-env",
		Args:     []string{"--profile", profile, "--set", toplevel},
		Log:      a.Log,
		Detached: true,
	})
	if err != nil {
		return fmt.Errorf("set profile %s: %w", profile, err)
	}
	return nil
}

// Reboot runs the reboot command. Its exit status decides; on success the
// machine is on its way down, so the caller should report first.
func (a *Activator) Reboot(ctx context.Context) error {
	cmd := a.paths().RebootCommand
	if cmd[0] == "" {
		return errors.New("reboot: the reboot command is empty: configure a command such as [\"systemctl\", \"reboot\"]")
	}
	a.logf("rebooting: %s", strings.Join(cmd, " "))
	if err := a.run(ctx, cmd, false); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}

// CommandError is a command that failed; Output holds the last lines it
// printed (standard output and error together, as a user sees them).
type CommandError = proc.Error

// switchGrace is how long switch-to-configuration and the reboot command
// have between SIGTERM and SIGKILL when they are cancelled.
const switchGrace = 10 * time.Second

// run runs argv in its own process group (so cancelling also stops what
// it forked), sends its output to the log and returns a *CommandError
// quoting the output's tail when it fails. Nothing sits between the
// process and its exit status: no shell, no pipe. detached runs it to its
// end whatever ctx does.
func (a *Activator) run(ctx context.Context, argv []string, detached bool) error {
	_, err := proc.Run(ctx, proc.Cmd{
		Argv:      argv,
		Env:       a.Env,
		Stderr:    a.Log,
		Combined:  true,
		TailBytes: 32 << 10,
		Grace:     switchGrace,
		Detached:  detached,
	})
	return err
}
