package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/secrets"
)

// secretsDir holds, under the state directory, the published secrets and
// what is installed (root only; see package secrets).
const secretsDir = "secrets"

// secretsAgent is the tick's secrets half; its lines go to log (the attempt's
// uploaded log, or the tick's output).
func (t *tick) secretsAgent(log io.Writer) *secrets.Agent {
	return &secrets.Agent{
		Dir:   filepath.Join(t.cfg.StateDir, secretsDir),
		Specs: t.cfg.Secrets,
		Installer: secrets.Installer{
			Restarter:   secrets.Command(t.cfg.RestartCommand),
			AgeIdentity: t.cfg.IdentityFile,
			Log:         slog.New(newLineHandler(log)),
		},
	}
}

// fetchSecrets downloads a publication's secrets with its tree: one that
// cannot be fetched or verified fails the attempt before anything changed.
func (t *tick) fetchSecrets(ctx context.Context, m *manifest.Manifest, rep *manifest.Report, log *logBuffer) error {
	n, err := t.secretsAgent(log).Fetch(ctx, m, t.getConn())
	rep.BytesFetched += n
	if err == nil && len(m.Secrets) > 0 {
		log.Printf("fetched %d secrets (%d bytes downloaded)", len(m.Secrets), n)
	}
	return err
}

// installSecrets installs version's secrets before the switch (the new
// system's units find them) and again after it (owners the switch created
// now exist), then restarts the units of the secrets that changed. What
// could not be installed goes into the report, never a secret's content.
func (t *tick) installSecrets(ctx context.Context, version string, rep *manifest.Report, log *logBuffer, afterSwitch bool) {
	a := t.secretsAgent(log)
	o, err := a.Install(ctx, version)
	t.note(o.Note)
	if err != nil {
		log.Printf("warning: secrets: %v", err)
		rep.SecretErrors = map[string]string{"*": err.Error()}
		return
	}
	if !afterSwitch {
		t.secretsBefore = &o
		rep.SecretErrors = orNil(o.Errors)
		return
	}
	outcomes := []*secrets.Outcome{&o}
	if t.secretsBefore != nil {
		outcomes = []*secrets.Outcome{t.secretsBefore, &o}
	}
	if err := a.Finish(ctx, []string{version}, outcomes...); err != nil {
		log.Printf("warning: secrets: %v", err)
	}
	rep.SecretErrors = orNil(o.Errors)
}

// restoreSecrets puts back the applied version's secrets after an attempt
// that installed its own before the switch and then did not switch.
func (t *tick) restoreSecrets(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer) {
	if st.AppliedVersion != "" && t.secretsBefore != nil {
		t.installSecrets(context.WithoutCancel(ctx), st.AppliedVersion, rep, log, true)
	}
}

// idleSecrets puts back, on a tick with nothing new, the applied version's
// secrets that are missing or were changed (/run is emptied at boot).
func (t *tick) idleSecrets(ctx context.Context, version string, rep *manifest.Report) {
	if version == "" {
		return
	}
	a := t.secretsAgent(t.o.Out)
	o, err := a.Install(ctx, version)
	if errors.Is(err, secrets.ErrNotHeld) {
		// No earlier tick fetched them (an agent from before secrets, a
		// state directory restored from a backup): fetch them now.
		var m *manifest.Manifest
		if m, err = t.readManifest(ctx); err == nil && m.Version == version {
			if _, err = a.Fetch(ctx, m, t.getConn()); err == nil {
				o, err = a.Install(ctx, version)
			}
		}
	}
	t.note(o.Note)
	if err != nil {
		t.say("warning: secrets: %v", err)
		rep.SecretErrors = map[string]string{"*": err.Error()}
		return
	}
	if err := a.Finish(ctx, []string{version}, &o); err != nil {
		t.say("warning: secrets: %v", err)
	}
	rep.SecretErrors = orNil(o.Errors)
}

// repairSecrets puts back, from the held copies, the applied version's
// secrets on a tick that reports nothing (the server is out of reach, or
// the newest version waits for its retry): the running system needs them
// whatever the server says, and /run is emptied at every boot. Failures
// are the next report's business; here they are only printed.
func (t *tick) repairSecrets(ctx context.Context, st State) {
	if st.AppliedVersion == "" || ctx.Err() != nil {
		return
	}
	a := t.secretsAgent(t.o.Out)
	o, err := a.Install(ctx, st.AppliedVersion)
	// No report on this tick: the note is only printed.
	t.note(o.Note)
	if errors.Is(err, secrets.ErrNotHeld) {
		return
	}
	if err != nil {
		t.say("warning: secrets: %v", err)
		return
	}
	// Keep the copies of the version waiting for its retry.
	if err := a.Finish(ctx, []string{st.AppliedVersion, st.Attempt.Version}, &o); err != nil {
		t.say("warning: secrets: %v", err)
	}
	for name, msg := range o.Errors {
		t.say("warning: secret %s not installed: %s", name, msg)
	}
}

// ErrSecretsFailed is returned (wrapped) by InstallSecrets when some
// secret could not be installed; the others were.
var ErrSecretsFailed = errors.New("some secrets were not installed")

// InstallSecrets puts the secrets of the version the host applied back in
// place from the agent's own copies, without the network: at boot (/run was
// emptied) before the units that need them start, or by hand. It takes the
// tick lock, writes nothing into the report (the next tick reports), and
// restarts the units of the secrets it wrote only when restart is set: at
// boot the units start after it and find them. A host that applied nothing
// yet, or holds no copy (its first tick fetches them), is not an error.
func InstallSecrets(ctx context.Context, cfg Config, o Options, restart bool) error {
	if err := cfg.Complete(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	t := &tick{cfg: cfg, o: o}
	if _, err := os.Stat(cfg.StateDir); errors.Is(err, os.ErrNotExist) {
		t.say("no state directory %s: nothing applied yet, no secrets to install", cfg.StateDir)
		return nil
	}
	lk, err := acquireLock(ctx, cfg.StateDir, o.LockWait, o.Out)
	if err != nil {
		return err
	}
	defer lk.release()
	version, err := t.appliedVersion()
	if err != nil || version == "" {
		return err
	}
	return t.reinstallSecrets(ctx, version, restart)
}

// appliedVersion is the version the state says the host applied; ""
// (said) when it applied nothing yet.
func (t *tick) appliedVersion() (string, error) {
	st, note, err := loadState(t.cfg.StateDir, time.Now())
	if err != nil {
		return "", err
	}
	if note != "" {
		t.say("warning: %s", note)
	}
	if st.AppliedVersion == "" {
		t.say("nothing applied yet: no secrets to install")
	}
	return st.AppliedVersion, nil
}

// reinstallSecrets is InstallSecrets once the lock is held: it installs
// the agent's copies of version's secrets, restarting their units when
// restart is set.
func (t *tick) reinstallSecrets(ctx context.Context, version string, restart bool) error {
	a := t.secretsAgent(t.o.Out)
	out, err := a.Install(ctx, version)
	if errors.Is(err, secrets.ErrNotHeld) {
		t.say("warning: the secrets of version %s are not held here: the next tick fetches them", version)
		return nil
	}
	if err != nil {
		return fmt.Errorf("secrets: %w", err)
	}
	if restart {
		if err := a.Finish(ctx, []string{version}, &out); err != nil {
			t.say("warning: secrets: %v", err)
		}
	}
	t.say("secrets of version %s: %d written, %d removed, %d failed",
		version, len(out.Changed), len(out.Removed), len(out.Errors))
	if len(out.Errors) == 0 {
		return nil
	}
	names := slices.Sorted(maps.Keys(out.Errors))
	for _, name := range names {
		t.say("error: %s", out.Errors[name])
	}
	return fmt.Errorf("host %s: %w: %v", t.cfg.Host, ErrSecretsFailed, names)
}

func orNil(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
