package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"

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

func orNil(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
