package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/sftpcache"
)

// apply fetches, builds and switches to a new publication.
func (t *tick) apply(ctx context.Context, st *State, m *manifest.Manifest) (Outcome, error) {
	now := t.o.Now()
	st.begin(m.Version, m.ExpectedToplevel, now)
	rep := t.newReport(st, m.Version, m.ExpectedToplevel, now)
	log := newLogBuffer(t.cfg.LogMaxBytes, t.o.Out)
	if err := saveState(t.cfg.StateDir, *st); err != nil {
		// Nothing is fetched without the attempt on record; but a full
		// disk must not make the host go silent: the failure is
		// reported (directly, when the queue cannot hold it either).
		return t.failStep(ctx, st, &rep, log, "state", describeDiskError(err))
	}
	t.progress = t.startProgress(ctx, m.Version, rep.StartedAt, log)
	log.Printf("host %s: applying version %s published %s (attempt %d, mode %s, operation %s)",
		t.cfg.Host, m.Version, m.PublishedAt.UTC().Format(time.RFC3339), st.Attempt.Count, t.cfg.Mode, t.cfg.Operation)

	if err := t.fetchPublication(ctx, st, m, &rep, log); err != nil {
		return t.failStepUnlessStopped(ctx, st, &rep, log, "fetch", err)
	}
	rep.Stage = manifest.StageFetched

	toplevel, err := t.realiseSystem(ctx, m, &rep, log)
	if err != nil {
		return t.failStepUnlessStopped(ctx, st, &rep, log, map[string]string{manifest.ModeFetch: "realise", manifest.ModeBuild: "build"}[t.cfg.Mode], err)
	}
	rep.ActualToplevel = toplevel
	logBuilt(log, &rep, toplevel, m.ExpectedToplevel)
	rep.Stage = manifest.StageBuilt
	t.installSecrets(ctx, m.Version, &rep, log, false)
	return t.switchTo(ctx, st, &rep, log, toplevel, m.Version, ActionApplied, manifest.ResultSuccess)
}

// failStep ends the attempt as failed in step.
func (t *tick) failStep(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, step string, err error) (Outcome, error) {
	err = &stepError{step, err}
	log.Printf("%v", err)
	return t.failAttempt(ctx, st, rep, log, err)
}

// failStepUnlessStopped is failStep, except when ctx ended (a signal):
// then the attempt stays running, for the next tick to take up.
func (t *tick) failStepUnlessStopped(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, step string, err error) (Outcome, error) {
	if ctx.Err() != nil {
		return Outcome{}, err
	}
	return t.failStep(ctx, st, rep, log, step, err)
}

// fetchPublication downloads what the attempt needs before it builds:
// the tree (build mode) and the secrets.
func (t *tick) fetchPublication(ctx context.Context, st *State, m *manifest.Manifest, rep *manifest.Report, log *logBuffer) error {
	if t.cfg.Mode == manifest.ModeFetch {
		// Fetch mode evaluates nothing, so it asks for no tree: the
		// publication may not even list one (the way to keep hosts blind
		// to each other's configuration). Trees and objects left from
		// build mode go.
		if err := t.store.Empty(); err != nil {
			log.Printf("warning: removing local trees (fetch mode keeps none): %v", err)
		}
	} else if err := t.stageTree(ctx, st, m, rep, log); err != nil {
		return err
	}
	return t.fetchSecrets(ctx, m, rep, log)
}

// realiseSystem builds m's system (build mode) or fetches the server's
// build from the substituters (fetch mode), and returns its store path.
func (t *tick) realiseSystem(ctx context.Context, m *manifest.Manifest, rep *manifest.Report, log *logBuffer) (string, error) {
	var toplevel string
	var err error
	if t.cfg.Mode != manifest.ModeFetch {
		// Fetch mode's realising is the download: it stays "fetching".
		t.progress.stage(manifest.ProgressBuilding)
	}
	cfg, doneCache := t.serverCache(ctx, m, log)
	if t.cfg.Mode == manifest.ModeFetch {
		log.Printf("realising %s from the substituters (fetch mode: evaluating nothing)", m.ExpectedToplevel)
		toplevel, err = fetch(ctx, t.o.Nix, cfg, m, log)
	} else {
		log.Printf("building %s", strings.Join(installable(t.cfg.Host, m, t.store.Path(m.Version)), " "))
		toplevel, err = build(ctx, t.o.Nix, cfg, m, t.store.Path(m.Version), false, log)
	}
	cacheBytes, err := doneCache(err)
	rep.BytesFetched += cacheBytes
	// A tampered cache is named by doneCache; the generic hints would mislead.
	if err != nil && t.cfg.Mode == manifest.ModeFetch && !errors.Is(err, sftpcache.ErrTampered) {
		err = fetchHint(err, log.Bytes())
	}
	return toplevel, err
}

// logBuilt says what was built, and whether it is the system the server
// built (expected).
func logBuilt(log *logBuffer, rep *manifest.Report, toplevel, expected string) {
	if expected == "" {
		log.Printf("built %s", toplevel)
		return
	}
	same := toplevel == expected
	rep.Reproducible = &same
	if same {
		log.Printf("built %s: the same system the server built", toplevel)
	} else {
		log.Printf("built %s, but the server built %s: not reproducible (applying this host's build)", toplevel, expected)
	}
}

// stageTree brings m's tree into the local store and materialises it,
// downloading only the objects the store lacks.
func (t *tick) stageTree(ctx context.Context, st *State, m *manifest.Manifest, rep *manifest.Report, log *logBuffer) error {
	cur, _ := t.store.Current()
	start := time.Now()
	stats, err := t.store.Stage(ctx, m, t.getConn(), cur, st.AppliedVersion)
	rep.BytesFetched += stats.Bytes
	t.fetched += stats.Downloaded
	if stats.Discarded != "" {
		log.Printf("warning: not reusing the local tree: %s; made it again", stats.Discarded)
	}
	if stats.Refetched > 0 {
		log.Printf("warning: %d objects of the local store were damaged; fetched them again", stats.Refetched)
	}
	if err != nil {
		if stats.Downloaded > 0 {
			log.Printf("%d objects (%d bytes) downloaded and verified before the failure are kept for the next attempt", stats.Downloaded, stats.Bytes)
		}
		return err
	}
	if stats.Reused {
		log.Printf("fetched version %s: its local tree is complete (%d files verified), nothing downloaded", m.Version, stats.Files)
	} else {
		log.Printf("fetched version %s: %d of %d objects downloaded (%d bytes), %d already held, %d taken from an older tree, for %d files, in %s",
			m.Version, stats.Downloaded, stats.Objects, stats.Bytes, stats.Held, stats.Imported, stats.Files, time.Since(start).Round(time.Millisecond))
	}
	if err := t.store.SetCurrent(m.Version); err != nil {
		return err
	}
	if err := t.store.Prune(m.Version, st.AppliedVersion); err != nil {
		log.Printf("warning: removing old trees: %v", err)
	}
	// The store keeps what the trees kept need, nothing else.
	if err := t.store.GC(m, st.AppliedVersion); err != nil {
		log.Printf("warning: %v", err)
	}
	return nil
}

// switchTo activates toplevel behind the guard: a failed activation, or
// a server that cannot be reached again within confirmTimeout, rolls back
// to the system that ran before. Nothing switched, nothing rolled back.
//
// From the moment the profile is touched until the outcome is recorded,
// the activation is detached from ctx: a signal does not cut a
// switch-to-configuration in half or skip the guard; it is noted and
// honoured once the outcome is recorded (no reboot then). Before the
// switch the journal (State.Switch) is saved, so that an agent killed
// outright leaves what the next tick needs to confirm or roll back.
func (t *tick) switchTo(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, toplevel, version, action string, result manifest.Result) (Outcome, error) {
	act := t.activator(log)
	op := t.cfg.Operation
	prev, err := act.Current()
	if err != nil {
		return t.failAttempt(ctx, st, rep, log, &stepError{"activation", err})
	}
	if ctx.Err() != nil {
		return Outcome{}, ctx.Err()
	}
	now := t.o.Now()
	st.Switch = &SwitchJournal{
		Version: version, To: toplevel, From: prev, FromVersion: st.AppliedVersion, Op: op, At: now.UTC(),
		ConfirmBy: now.Add(time.Duration(t.cfg.ConfirmTimeout)).UTC(), Phase: phaseSwitching,
	}
	if err := saveState(t.cfg.StateDir, *st); err != nil {
		st.Switch = nil
		err = fmt.Errorf("activation: the switch cannot be recorded before it is made, so it is not made: %w", describeDiskError(err))
		log.Printf("%v", err)
		return t.failAttempt(ctx, st, rep, log, err)
	}
	actx := context.WithoutCancel(ctx)
	stopNote := context.AfterFunc(ctx, func() {
		log.Printf("signal received: stopping after the activation finishes")
	})
	defer stopNote()
	out, err := t.activate(actx, st, rep, log, act, prev, toplevel, version, action, result)
	if ctx.Err() != nil {
		// Honoured now that the outcome is recorded: no reboot.
		return out, errors.Join(err, fmt.Errorf("stopped after the activation finished: %w", ctx.Err()))
	}
	rebooted, rerr := t.rebootIfDue(ctx, act)
	out.Rebooted = rebooted
	return out, errors.Join(err, rerr)
}

// activate is switchTo's uncancellable part: switch, guard, record.
func (t *tick) activate(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, act *activate.Activator, prev, toplevel, version, action string, result manifest.Result) (Outcome, error) {
	op := t.cfg.Operation
	t.progress.stage(manifest.ProgressSwitching)
	log.Printf("switching to %s (%s); the running system is %s", toplevel, op, orNone(prev))
	outcome, err := act.Switch(ctx, toplevel, op)
	if err != nil {
		err = &stepError{"activation", err}
		if !outcome.NeedsRollback() {
			log.Printf("%v (nothing was changed)", err)
			t.restoreSecrets(ctx, st, rep, log)
			return t.failAttempt(ctx, st, rep, log, err)
		}
		return t.rollback(ctx, st, rep, log, act, prev, manifest.RollbackActivationFailed, err)
	}
	switch {
	case outcome == activate.Skipped:
		// This tick reached the server with the system running: that is
		// the confirmation.
		log.Printf("already running %s: nothing to switch", toplevel)
		rep.Stage = manifest.StageConfirmed
	case op == activate.OpBoot:
		log.Printf("%s is the boot default; it runs after the next reboot", toplevel)
		rep.Stage = manifest.StageSwitched
		t.awaitBoot(st, log)
	default:
		rep.Stage = manifest.StageSwitched
		if ok, cause := t.checkSwitched(ctx, st, rep, log, toplevel); !ok {
			return t.rollback(ctx, st, rep, log, act, prev, manifest.RollbackHealthCheck, cause)
		}
		if err := t.confirmSwitch(ctx, log); err != nil {
			if errors.Is(err, activate.ErrUnconfirmed) {
				return t.rollback(ctx, st, rep, log, act, prev, manifest.RollbackServerUnreachable, err)
			}
			return Outcome{}, err
		}
		rep.Stage = manifest.StageConfirmed
	}
	st.AppliedVersion, st.AppliedSystem = version, toplevel
	t.installSecrets(ctx, version, rep, log, true)
	rep.Result = result
	t.planReboot(rep, act, toplevel, log)
	return t.finishAttempt(ctx, st, rep, log, action, nil)
}

// confirmSwitch is the guard after a switch: the server (or the bundle)
// must still be reachable within confirmTimeout.
func (t *tick) confirmSwitch(ctx context.Context, log *logBuffer) error {
	timeout := time.Duration(t.cfg.ConfirmTimeout)
	t.progress.stage(manifest.ProgressConfirming)
	what := "the server is still reachable"
	if t.local != nil {
		// Offline the guard is the activation itself: there is no
		// network the new system could have cut.
		what = "the bundle is still readable"
	}
	log.Printf("switched; checking that %s (up to %s)", what, timeout)
	probes := 0
	probe := func(ctx context.Context) error {
		probes++
		err := t.probe(ctx)
		if err != nil && ctx.Err() == nil {
			// In the log: a network that came back in time is visible.
			log.Printf("confirmation probe %d: the server is not reachable: %v", probes, err)
		}
		return err
	}
	if err := activate.Confirm(ctx, timeout, probe); err != nil {
		return err
	}
	if t.local != nil {
		log.Printf("confirmed: the bundle is still readable after the switch")
	} else {
		log.Printf("confirmed: the server answers after the switch")
	}
	return nil
}

func (t *tick) failAttempt(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, err error) (Outcome, error) {
	recordFailure(rep, manifest.StageFailed, manifest.ResultFailure, err)
	return t.finishAttempt(ctx, st, rep, log, ActionFailed, err)
}

func (t *tick) rollback(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, act *activate.Activator, prev, reason string, cause error) (Outcome, error) {
	return t.rollbackOp(ctx, st, rep, log, act, prev, t.cfg.Operation, reason, cause)
}

// rollbackOp rolls back with operation op: the configured one, except
// after a boot into an unhealthy system, which is left at once (switch).
// After a health-check rollback the checks run against prev too.
func (t *tick) rollbackOp(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, act *activate.Activator, prev, op, reason string, cause error) (Outcome, error) {
	if prev == "" {
		// No rollback happened, so the report names no reason for one
		// (status would otherwise show a rollback that never was).
		err := fmt.Errorf("%w; no system was running before (%s missing), so there is nothing to roll back to", cause, t.cfg.CurrentSystem)
		log.Printf("%v", err)
		return t.failAttempt(ctx, st, rep, log, err)
	}
	rep.RollbackReason = reason
	if st.Switch != nil && st.Switch.Phase != phaseRollingBack {
		// A machine found on prev after a kill was rolled back on purpose.
		st.Switch.Phase = phaseRollingBack
		if err := saveState(t.cfg.StateDir, *st); err != nil {
			log.Printf("warning: %v", describeDiskError(err))
		}
	}
	log.Printf("%v: rolling back to %s", cause, prev)
	if err := act.Rollback(context.WithoutCancel(ctx), prev, op); err != nil {
		err = fmt.Errorf("%w; rolling back to %s failed too: %w", cause, prev, err)
		log.Printf("%v", err)
		return t.failAttempt(ctx, st, rep, log, err)
	}
	log.Printf("rolled back to %s", prev)
	if st.AppliedVersion != "" && t.secretsBefore != nil {
		// The old system gets its own secrets back.
		t.installSecrets(context.WithoutCancel(ctx), st.AppliedVersion, rep, log, true)
	}
	if reason == manifest.RollbackHealthCheck {
		t.checkPrevious(context.WithoutCancel(ctx), rep, log, prev)
	}
	recordFailure(rep, manifest.StageRolledBack, manifest.ResultRolledBack, cause)
	return t.finishAttempt(ctx, st, rep, log, ActionRolledBack, fmt.Errorf("rolled back to %s: %w", prev, cause))
}

// probe is the confirmation after a switch: a fresh connection (the old
// one may have survived a network that is now broken) that can read the
// manifest. It becomes the tick's connection.
func (t *tick) probe(ctx context.Context) error {
	if t.local != nil {
		// Offline: there is no server to lose; the bundle confirms.
		_, err := t.local.Stat(ctx, manifest.ManifestFile)
		return err
	}
	// Any of the servers confirms: what matters is that the new system
	// can still reach the fleet's publication.
	c, err := t.dial(ctx, 1)
	if err != nil {
		return err
	}
	if _, err := c.Stat(ctx, manifest.ManifestFile); err != nil {
		c.Close()
		return err
	}
	t.setConn(c)
	return nil
}

// planReboot decides, after a switch, whether and when to reboot.
func (t *tick) planReboot(rep *manifest.Report, act *activate.Activator, toplevel string, log *logBuffer) {
	if t.cfg.Operation == activate.OpTest {
		// test does not touch the boot loader: a reboot returns to the
		// profile's system, so there is nothing to reboot into.
		return
	}
	booted, _ := act.Booted()
	rc, err := activate.NeedsReboot(booted, toplevel)
	if err != nil {
		log.Printf("warning: reboot check: %v", err)
		return
	}
	if rc.Note != "" {
		log.Printf("reboot check: %s", rc.Note)
	}
	rep.RebootRequired = rc.Required
	if !rc.Required {
		// A newer generation that no longer needs it cancels a pending reboot.
		if p, _ := activate.LoadPending(t.cfg.StateDir); p != nil {
			log.Printf("the pending reboot planned for %s is no longer needed: cancelled", p.At.Format(time.RFC3339))
		}
		activate.ClearPending(t.cfg.StateDir)
		return
	}
	log.Printf("reboot required: %s changed since boot (booted system %s)", strings.Join(rc.Changed, ", "), booted)
	at, ok := t.policy.Plan(t.o.Now(), t.o.Rand)
	if !ok {
		log.Printf("reboot policy %s: reporting reboot-required, not rebooting", t.policy.Mode)
		activate.ClearPending(t.cfg.StateDir)
		return
	}
	if err := activate.SavePending(t.cfg.StateDir, activate.PendingReboot{At: at, System: toplevel}); err != nil {
		log.Printf("warning: %v", err)
		return
	}
	at = at.UTC()
	rep.RebootScheduled = &at
	log.Printf("reboot planned for %s (policy %s)", at.Format(time.RFC3339), t.policy.Mode)
}

// rebootIfDue runs a planned reboot whose time has come, once the report
// is delivered or queued. It cancels one that is no longer needed.
func (t *tick) rebootIfDue(ctx context.Context, act *activate.Activator) (bool, error) {
	p, err := activate.LoadPending(t.cfg.StateDir)
	if err != nil || p == nil {
		return false, err
	}
	if t.policy.Mode == activate.PolicyNever {
		t.say("reboot policy is never: dropping the reboot planned for %s", p.At.Format(time.RFC3339))
		return false, activate.ClearPending(t.cfg.StateDir)
	}
	booted, _ := act.Booted()
	next, _ := act.ProfileTarget()
	if t.cfg.Operation == activate.OpTest {
		next, _ = act.Current()
	}
	if !p.StillNeeded(booted, next) {
		t.say("the reboot planned for %s is no longer needed: cancelled", p.At.Format(time.RFC3339))
		return false, activate.ClearPending(t.cfg.StateDir)
	}
	if t.o.Now().Before(p.At) {
		t.say("reboot planned for %s", p.At.Format(time.RFC3339))
		return false, nil
	}
	t.say("rebooting into %s (planned for %s)", p.System, p.At.Format(time.RFC3339))
	if err := act.Reboot(ctx); err != nil {
		return false, err
	}
	return true, activate.ClearPending(t.cfg.StateDir)
}

// upToDate is a tick with nothing new: it refreshes the report (so the
// server sees the host alive, and its current and booted systems) and
// runs a reboot that came due.
func (t *tick) upToDate(ctx context.Context, st State, head manifestHead) (Outcome, error) {
	act := t.activator(t.o.Out)
	now := t.o.Now()
	rep := t.lastReport()
	rep.Format, rep.Host = manifest.Format, t.cfg.Host
	rep.SeenVersion, rep.AppliedVersion, rep.AttemptedVersion = head.Version, st.AppliedVersion, st.Attempt.Version
	rep.ExpectedToplevel = head.Expected
	if rep.Result != manifest.ResultAutoUpdated {
		rep.Result = manifest.ResultUnchanged
	}
	if rep.Stage == "" {
		rep.Stage = manifest.StageConfirmed
	}
	rep.RollbackReason, rep.NextRetry = "", nil
	if rep.ActualToplevel == "" {
		rep.ActualToplevel = st.AppliedSystem
	}
	rep.Mode, rep.Operation, rep.AgentVersion = t.cfg.Mode, t.cfg.Operation, t.o.AgentVersion
	rep.CurrentSystem, _ = act.Current()
	rep.BootedSystem, _ = act.Booted()
	rep.Attempts = st.Attempt.Count
	rep.BytesFetched = 0
	rep.StartedAt, rep.FinishedAt = now.UTC(), now.UTC()
	rep.RebootRequired, rep.RebootScheduled = t.rebootRequired(act, st, rep.BootedSystem), nil
	if p, _ := activate.LoadPending(t.cfg.StateDir); p != nil && rep.RebootRequired {
		at := p.At.UTC()
		rep.RebootScheduled = &at
	}
	t.idleSecrets(ctx, st.AppliedVersion, &rep)
	rep.Health, rep.PreviousHealth = t.checkQuiet(ctx, rep.CurrentSystem), nil
	// After the secrets: a damaged secrets state is one of the notes.
	rep.Error, rep.Summary = t.withNotes(""), ""
	t.say("up to date: version %s, running %s", head.Version, orNone(rep.CurrentSystem))
	out := Outcome{Action: ActionUpToDate, Report: &rep}
	err := t.send(ctx, rep, "", nil, false)
	rebooted, rerr := t.rebootIfDue(ctx, act)
	out.Rebooted = rebooted
	return out, errors.Join(err, rerr)
}

// rebootRequired says whether the system the profile boots next (the
// applied one when the profile names none) differs from booted in what
// needs a reboot. Never after test, which leaves the boot default alone.
func (t *tick) rebootRequired(act *activate.Activator, st State, booted string) bool {
	if t.cfg.Operation == activate.OpTest || booted == "" {
		return false
	}
	next, _ := act.ProfileTarget()
	if next == "" {
		next = st.AppliedSystem
	}
	if next == "" {
		return false
	}
	rc, err := activate.NeedsReboot(booted, next)
	return err == nil && rc.Required
}

// lastReport is the last report made (a zero one when there is none or it
// is damaged: it only seeds the next heartbeat, and is rewritten by it).
func (t *tick) lastReport() manifest.Report {
	var r manifest.Report
	data, err := statefile.Read(filepath.Join(t.cfg.StateDir, lastReportFile), maxStateFile)
	if err == nil && json.Unmarshal(data, &r) != nil {
		r = manifest.Report{}
	}
	return r
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// pruneLogs keeps the newest keep logs under reports/logs (by the time in
// their names) and removes what a killed upload left behind. NAME.log and
// NAME.log.gz of one attempt count as one log.
func pruneLogs(ctx context.Context, c remote, keep int) error {
	fis, err := c.ReadDir(ctx, manifest.LogsDir)
	if err != nil {
		return err
	}
	var logs []attemptLog
	files := map[string][]string{}
	var errs []error
	for _, fi := range fis {
		name := fi.Name()
		if strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-") {
			errs = append(errs, c.Remove(ctx, manifest.LogsDir+"/"+name))
			continue
		}
		l, ok := parseLogName(name)
		if !ok {
			continue
		}
		if files[l.base] == nil {
			logs = append(logs, l)
		}
		files[l.base] = append(files[l.base], name)
	}
	sortLogs(logs)
	for len(logs) > keep {
		for _, name := range files[logs[0].base] {
			errs = append(errs, c.Remove(ctx, manifest.LogsDir+"/"+name))
		}
		logs = logs[1:]
	}
	return errors.Join(errs...)
}

// attemptLog is the log of one attempt under reports/logs: its name
// without .log or .log.gz (base), and the time in it (at).
type attemptLog struct{ base, at string }

// parseLogName reads a log's file name (logName); ok is false for a file
// that is not an attempt's log.
func parseLogName(name string) (attemptLog, bool) {
	base := strings.TrimSuffix(strings.TrimSuffix(name, ".gz"), ".log")
	i := strings.LastIndexByte(base, '-')
	if i < 0 || base == name {
		return attemptLog{}, false
	}
	if _, err := time.Parse(logTimeLayout, base[i+1:]); err != nil {
		return attemptLog{}, false
	}
	return attemptLog{base, base[i+1:]}, true
}

// sortLogs puts logs oldest first.
func sortLogs(logs []attemptLog) {
	sort.Slice(logs, func(i, j int) bool {
		if logs[i].at != logs[j].at {
			return logs[i].at < logs[j].at
		}
		return logs[i].base < logs[j].base
	})
}

// fetchHint explains the two usual reasons a fetch fails, which Nix only
// tells in a warning before its error.
func fetchHint(err error, log []byte) error {
	switch {
	case bytes.Contains(log, []byte("is not signed by any of the keys")):
		return fmt.Errorf("%w (the substituter's signature is not trusted: add its public key to trustedPublicKeys)", err)
	case bytes.Contains(log, []byte("don't know how to build")):
		return fmt.Errorf("%w (no substituter has this system: copy the server's build to a cache listed in substituters)", err)
	}
	return err
}
