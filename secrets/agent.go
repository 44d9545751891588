package secrets

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/bento-nix/bento/manifest"
)

// Agent is the secrets half of an agent tick: fetch a publication's
// secrets with its tree, install them before the switch, again after it
// (owners the new system created now exist) and on every idle tick (a
// reboot empties /run), then restart the units of what changed.
type Agent struct {
	// Dir is private to the agent (<stateDir>/secrets): held copies
	// under store/, what is installed in installed.json.
	Dir string
	// Specs are the host's secrets options by name.
	Specs     map[string]Spec
	Installer Installer
}

// Store is where the agent holds the published secrets.
func (a *Agent) Store() *Store { return &Store{Dir: filepath.Join(a.Dir, "store")} }

func (a *Agent) stateFile() string { return filepath.Join(a.Dir, "installed.json") }

// Fetch downloads and verifies m's secrets (nothing when they are held).
func (a *Agent) Fetch(ctx context.Context, m *manifest.Manifest, f Fetcher) (int64, error) {
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return 0, fmt.Errorf("secrets: %w", err)
	}
	if err := os.Chmod(a.Dir, 0o700); err != nil {
		return 0, fmt.Errorf("secrets: %w", err)
	}
	return a.Store().Stage(ctx, m, f)
}

// ErrNotHeld is returned (wrapped) by Install for a version whose secrets
// were never fetched: nothing is installed or removed.
var ErrNotHeld = errors.New("secrets not held")

// Install makes the host hold the secrets of version (fetched before) and
// saves what is installed. Per-secret failures are in Outcome.Errors.
func (a *Agent) Install(ctx context.Context, version string) (Outcome, error) {
	st := a.Store()
	if !st.Has(version) {
		return Outcome{}, fmt.Errorf("version %s: %w", version, ErrNotHeld)
	}
	files, err := st.Files(version)
	if err != nil {
		return Outcome{}, err
	}
	prev, note, err := LoadState(a.stateFile())
	if err != nil {
		return Outcome{}, err
	}
	o, err := a.Installer.Install(ctx, st.Path(version), files, a.Specs, prev)
	o.Note = note
	if err != nil {
		return o, err
	}
	// Saved even when some secrets failed: the state is what is on disk.
	if err := o.State.Save(a.stateFile()); err != nil {
		return o, err
	}
	return o, nil
}

// Finish restarts the units of the secrets the Outcomes changed (each unit
// once) and drops the held versions other than keep. Restart failures are
// added to the last Outcome's Errors.
func (a *Agent) Finish(ctx context.Context, keep []string, outcomes ...*Outcome) error {
	if len(outcomes) > 0 {
		all := Outcome{Errors: map[string]string{}, unitsOf: map[string][]string{}}
		for _, o := range outcomes {
			for u, names := range o.unitsOf {
				if _, ok := all.unitsOf[u]; !ok {
					all.Units = append(all.Units, u)
				}
				all.unitsOf[u] = append(all.unitsOf[u], names...)
			}
		}
		sort.Strings(all.Units)
		a.Installer.Restart(ctx, &all)
		last := outcomes[len(outcomes)-1]
		if last.Errors == nil {
			last.Errors = map[string]string{}
		}
		for name, msg := range all.Errors {
			last.Errors[name] = msg
		}
	}
	if err := a.Store().Prune(keep...); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
