package agent

import (
	"context"
	"fmt"
	"os"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// selfUpdate runs between publications when selfUpdate is on: it updates
// the flake inputs of a private copy of the applied tree (nix flake
// update), builds it, and switches when the system changed, reporting
// auto-updated. The published tree itself is never modified. A failure is
// reported like any failed attempt and backs off; the retry re-applies
// the publication as published.
func (t *tick) selfUpdate(ctx context.Context, st *State, head manifestHead) (Outcome, error) {
	m, err := t.readManifest(ctx)
	if err != nil {
		return t.refuse(ctx, st, head, err)
	}
	if m.Flake.Layout == string(fleet.LayoutClassic) {
		t.say("selfUpdate: the classic layout has no flake inputs to update")
		return t.upToDate(ctx, *st, head)
	}
	cur, _ := t.store.Current()
	if _, err := t.store.Stage(ctx, m, t.getConn(), cur, st.AppliedVersion); err != nil {
		return Outcome{}, fmt.Errorf("self-update: %w", err)
	}
	dir, err := t.store.Copy(m.Version)
	if err != nil {
		return Outcome{}, fmt.Errorf("self-update: %w", err)
	}
	defer os.RemoveAll(dir)

	now := t.o.Now()
	rep := t.newReport(st, m.Version, m.ExpectedToplevel, now)
	log := newLogBuffer(t.cfg.LogMaxBytes, t.o.Out)
	log.Printf("self-update: updating the flake inputs of version %s", m.Version)
	if err := flakeUpdate(ctx, t.o.Nix, &t.cfg, dir, log); err != nil {
		return t.failAttempt(ctx, st, &rep, log, fmt.Errorf("self-update: nix flake update: %w", err))
	}
	toplevel, err := build(ctx, t.o.Nix, &t.cfg, m, dir, true, log)
	if err != nil {
		return t.failAttempt(ctx, st, &rep, log, fmt.Errorf("self-update: build: %w", err))
	}
	current, _ := t.activator(nil).Current()
	if toplevel == current {
		t.say("self-update: inputs give the running system %s: nothing to do", toplevel)
		return t.upToDate(ctx, *st, head)
	}
	rep.ActualToplevel = toplevel
	rep.Stage = manifest.StageBuilt
	log.Printf("self-update: built %s", toplevel)
	return t.switchTo(ctx, st, &rep, log, toplevel, m.Version, ActionAutoUpdated, manifest.ResultAutoUpdated)
}
