package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/manifest"
)

// adoptRecordedOutcome settles an attempt whose report was queued but
// whose state was not saved (a kill between the two in finishAttempt):
// the report of that very attempt (same version, same start) is the
// record of its outcome, so it is not tried again.
func (t *tick) adoptRecordedOutcome(st *State) error {
	a := st.Attempt
	if !a.Running {
		return nil
	}
	rep := t.recordedOutcome(a)
	if rep == nil {
		return nil
	}
	t.say("the last tick was stopped after recording the outcome of version %s (%s): taking it as it is", a.Version, rep.Result)
	st.finish(rep.Result, rep.FinishedAt, t.retry)
	st.AppliedVersion = rep.AppliedVersion
	if final(rep.Result) && rep.AppliedVersion == a.Version {
		st.AppliedSystem = rep.ActualToplevel
	}
	st.Switch = nil
	return saveState(t.cfg.StateDir, *st)
}

// recordedOutcome is the finished report of attempt a: the newest such
// entry of the queue, else last-report.json; nil when neither is.
func (t *tick) recordedOutcome(a Attempt) *manifest.Report {
	if entries, err := t.queue.List(); err == nil {
		for i := len(entries) - 1; i >= 0; i-- {
			if reportsAttempt(entries[i].Report, a) {
				return &entries[i].Report
			}
		}
	}
	if last := t.lastReport(); reportsAttempt(last, a) {
		return &last
	}
	return nil
}

// reportsAttempt says whether r is the finished report of attempt a
// (same version, same start).
func reportsAttempt(r manifest.Report, a Attempt) bool {
	return r.AttemptedVersion == a.Version && r.StartedAt.Equal(a.StartedAt) && r.Result != "" && !r.FinishedAt.IsZero()
}

// recoverSwitch settles an activation the agent did not see to its end
// (killed, out of memory, power cut between the switch and its outcome):
//
//   - the new system is in effect and the server answers now: confirmed;
//   - it is in effect, the server does not answer, and the confirmation
//     deadline has passed: rolled back to the system before;
//   - it is in effect, no answer, deadline not passed: nothing yet, a
//     later tick decides;
//   - it is in effect and the agent stopped during its health checks:
//     rolled back (reason health-check), since no check found it healthy;
//   - it is not in effect (killed before it took, or during the
//     rollback): the machine is put back on the system before if it is
//     not there, and the attempt counts as failed, so its retry delay
//     applies and it is never re-run at once.
//
// The outcome is reported like any other attempt's.
func (t *tick) recoverSwitch(ctx context.Context, st *State) (Outcome, error) {
	j := *st.Switch
	log := newLogBuffer(t.cfg.LogMaxBytes, t.o.Out)
	act := t.activator(log)
	rep := t.newReport(st, j.Version, st.Attempt.Expected, st.Attempt.StartedAt)
	rep.ActualToplevel = j.To
	log.Printf("host %s: the agent stopped during the activation of version %s (%s to %s from %s at %s); settling it",
		t.cfg.Host, j.Version, j.Op, j.To, orNone(j.From), j.At.Format(time.RFC3339))
	cur, _ := act.Current()
	prof, _ := act.ProfileTarget()
	inEffect := j.inEffect(cur, prof)
	switch {
	case inEffect && j.Phase == phaseChecking:
		return t.rollbackUnchecked(ctx, st, &rep, log, act, j)
	case inEffect && j.Phase == phaseSwitching:
		return t.settleSwitched(ctx, st, &rep, log, act, j)
	}
	// Not in effect, or a rollback was under way.
	return t.settleNotInEffect(ctx, st, &rep, log, act, j, cur, prof)
}

// inEffect says whether the journal's target took, by what its operation
// changes: the running system (test), the boot default (boot), or both.
func (j SwitchJournal) inEffect(cur, prof string) bool {
	switch j.Op {
	case activate.OpTest:
		return cur == j.To
	case activate.OpBoot:
		return prof == j.To
	}
	return cur == j.To && prof == j.To
}

// rollbackUnchecked rolls back a system the agent was killed while
// checking: the guard is still armed, and no check found it healthy.
func (t *tick) rollbackUnchecked(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, act *activate.Activator, j SwitchJournal) (Outcome, error) {
	cause := fmt.Errorf("the agent stopped during the health checks of %s (killed, out of memory, a power cut?): it was never found healthy, so it is not kept", j.To)
	op := t.cfg.Operation
	if j.Op == activate.OpBoot {
		// After the reboot into it: leave the running system now.
		op = activate.OpSwitch
		if j.From != "" {
			st.AppliedVersion, st.AppliedSystem = j.FromVersion, j.From
		}
	}
	return t.rollbackOp(context.WithoutCancel(ctx), st, rep, log, act, j.From, op, manifest.RollbackHealthCheck, cause)
}

// settleSwitched settles a system that took but was not confirmed: the
// server answering now confirms it; past the confirmation deadline
// without an answer it is rolled back; before the deadline a later tick
// decides.
func (t *tick) settleSwitched(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, act *activate.Activator, j SwitchJournal) (Outcome, error) {
	if j.Op == activate.OpBoot {
		log.Printf("%s is the boot default; it runs after the next reboot", j.To)
		return t.recovered(ctx, st, rep, log, j, manifest.StageSwitched)
	}
	err := t.connect(ctx, t.cfg.ConnectAttempts)
	if err == nil {
		log.Printf("%s runs and the server answers: confirmed", j.To)
		if ferr := t.flush(ctx); ferr != nil {
			t.log.Warn("queued reports not delivered", "err", ferr)
		}
		return t.recovered(ctx, st, rep, log, j, manifest.StageConfirmed)
	}
	if ctx.Err() != nil {
		return Outcome{}, err
	}
	now := t.o.Now()
	if now.Before(j.ConfirmBy) {
		t.say("the switch to %s is not confirmed: it is rolled back if the server is still unreachable after %s", j.To, j.ConfirmBy.Format(time.RFC3339))
		return Outcome{Action: ActionWaiting}, fmt.Errorf("%w (switch to %s not confirmed; rolled back after %s)", err, j.To, j.ConfirmBy.Format(time.RFC3339))
	}
	cause := fmt.Errorf("%w: the switch was not confirmed by %s and the server is still unreachable: %v", activate.ErrUnconfirmed, j.ConfirmBy.Format(time.RFC3339), err)
	return t.rollback(context.WithoutCancel(ctx), st, rep, log, act, j.From, manifest.RollbackServerUnreachable, cause)
}

// settleNotInEffect puts the machine back on the system before if it is
// not there, and counts the attempt as failed (or rolled back, when the
// rollback itself was interrupted), so its retry delay applies.
func (t *tick) settleNotInEffect(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, act *activate.Activator, j SwitchJournal, cur, prof string) (Outcome, error) {
	actx := context.WithoutCancel(ctx)
	var cause error
	if j.Phase == phaseRollingBack {
		cause = errors.New("the agent stopped while rolling back")
	} else {
		cause = fmt.Errorf("activation interrupted: the agent stopped before %s took effect (running %s, profile %s)", j.To, orNone(cur), orNone(prof))
	}
	onFrom := cur == j.From && (j.Op == activate.OpTest || prof == j.From)
	if j.From != "" && !onFrom {
		return t.rollback(actx, st, rep, log, act, j.From, manifest.RollbackInterrupted, cause)
	}
	log.Printf("%v; the machine runs %s", cause, orNone(cur))
	if j.Phase == phaseRollingBack {
		rep.RollbackReason = manifest.RollbackInterrupted
		recordFailure(rep, manifest.StageRolledBack, manifest.ResultRolledBack, cause)
		return t.finishAttempt(actx, st, rep, log, ActionRolledBack, cause)
	}
	return t.failAttempt(actx, st, rep, log, cause)
}

// recovered records an interrupted activation found in effect.
func (t *tick) recovered(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, j SwitchJournal, stage manifest.Stage) (Outcome, error) {
	rep.Stage = stage
	st.AppliedVersion, st.AppliedSystem = j.Version, j.To
	if j.Op == activate.OpBoot {
		// Its health checks still run after the reboot into it.
		t.awaitBoot(st, log)
	}
	rep.Result = manifest.ResultSuccess
	return t.finishAttempt(context.WithoutCancel(ctx), st, rep, log, ActionApplied, nil)
}

// reportInterrupted settles an attempt that keeps being interrupted: the
// agent died during it on two ticks running (a build that runs out of
// memory each time, a host that loses power). It is recorded as failed and
// reported once, so it waits for its retry like any failure and the server
// sees why the host does not move on, instead of a host silently pending.
func (t *tick) reportInterrupted(ctx context.Context, st *State) (Outcome, error) {
	a := st.Attempt
	log := newLogBuffer(t.cfg.LogMaxBytes, t.o.Out)
	rep := t.newReport(st, a.Version, a.Expected, a.StartedAt)
	cause := fmt.Errorf("attempt %d of version %s was interrupted like the one before: the agent stopped before it finished (killed, out of memory, a power cut?)", a.Count, a.Version)
	log.Printf("%v", cause)
	recordFailure(&rep, manifest.StageFailed, manifest.ResultFailure, cause)
	return t.finishAttempt(ctx, st, &rep, log, ActionWaiting, cause)
}
