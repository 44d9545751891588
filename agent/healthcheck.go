package agent

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/agent/health"
	"github.com/bento-nix/bento/manifest"
)

// Health checks decide whether a switch is kept (docs/agent.md, "Health
// checks"). They run after switch-to-configuration succeeded (for boot:
// once the machine booted the new system) and before the server's
// confirmation, with the journal in phaseChecking: an agent killed
// during them leaves the guard armed, and the next start rolls back
// (recoverSwitch) instead of confirming a system nobody found healthy.

func (t *tick) healthRunner(log io.Writer) *health.Runner {
	return &health.Runner{UnitCommand: t.cfg.HealthUnitCommand, Log: log, Now: t.o.Now}
}

// checkSwitched runs the health checks against toplevel, just switched
// to. ok false means a check failed (or the agent was stopped before it
// knew): the caller rolls back with the returned cause.
func (t *tick) checkSwitched(ctx context.Context, st *State, rep *manifest.Report, log *logBuffer, toplevel string) (bool, error) {
	checks := t.cfg.healthChecks(false)
	if len(checks) == 0 {
		return true, nil
	}
	if st.Switch != nil {
		st.Switch.Phase = phaseChecking
		if err := saveState(t.cfg.StateDir, *st); err != nil {
			// Without the phase on record a kill would look like a
			// switch waiting for the server only: refuse to go on.
			return false, fmt.Errorf("health checks: the check phase cannot be recorded: %w", describeDiskError(err))
		}
	}
	names := make([]string, len(checks))
	for i, c := range checks {
		names[i] = c.Name
	}
	log.Printf("running %d health check(s) against %s: %s (at most %s)", len(checks), toplevel, strings.Join(names, ", "),
		t.cfg.healthBudget().Round(time.Second))
	h := t.healthRunner(log).Run(ctx, toplevel, checks, true)
	rep.Health = h
	if f := h.Failing(); f != nil {
		return false, healthCause(h)
	}
	log.Printf("health checks passed: %s", strings.Join(names, ", "))
	if st.Switch != nil {
		// The server's confirmation starts now: its deadline too.
		st.Switch.Phase = phaseSwitching
		st.Switch.ConfirmBy = t.o.Now().Add(time.Duration(t.cfg.ConfirmTimeout)).UTC()
		if err := saveState(t.cfg.StateDir, *st); err != nil {
			log.Printf("warning: %v", describeDiskError(err))
		}
	}
	return true, nil
}

// healthCause names the failing check, its kind and the tail of its output.
func healthCause(h *manifest.Health) error {
	f := h.Failing()
	out := f.Output
	if out == "" {
		out = "no output"
	}
	return fmt.Errorf("health check %s (%s) failed after %d attempt(s): %s", f.Name, f.Kind, f.Attempts, out)
}

// checkPrevious runs the checks against the system rolled back to, so the
// report says whether going back helped.
func (t *tick) checkPrevious(ctx context.Context, rep *manifest.Report, log *logBuffer, prev string) {
	checks := t.cfg.healthChecks(false)
	if len(checks) == 0 {
		return
	}
	log.Printf("running the health checks against %s, the system rolled back to", prev)
	h := t.healthRunner(log).Run(ctx, prev, checks, true)
	rep.PreviousHealth = h
	if h.OK {
		log.Printf("the previous system %s passes the health checks", prev)
	} else {
		log.Printf("the previous system %s fails the health checks too: %v", prev, healthCause(h))
	}
}

// checkQuiet runs the continuous checks on a tick that applies nothing:
// the result goes in the report, nothing is rolled back.
func (t *tick) checkQuiet(ctx context.Context, system string) *manifest.Health {
	checks := t.cfg.healthChecks(true)
	if len(checks) == 0 {
		return nil
	}
	h := t.healthRunner(t.o.Out).Run(ctx, system, checks, false)
	if ctx.Err() != nil {
		// Stopped mid-way (SIGTERM): checks cut short say nothing about
		// the host, so none is reported.
		return nil
	}
	if !h.OK {
		t.say("warning: %v (reported; nothing is rolled back on a tick that applies nothing)", healthCause(h))
	}
	return h
}

// bootPending says whether a boot operation awaits its health checks
// after the reboot (State.Switch in phaseBootPending).
func bootPending(st State) bool {
	return st.Switch != nil && st.Switch.Phase == phaseBootPending
}

// settleBoot handles a boot operation whose health checks wait for the
// machine to boot the new system. done false: nothing to do yet (not
// rebooted), the tick goes on as usual with the journal kept.
func (t *tick) settleBoot(ctx context.Context, st *State) (out Outcome, done bool, err error) {
	j := *st.Switch
	look := t.activator(io.Discard)
	booted, _ := look.Booted()
	prof, _ := look.ProfileTarget()
	if booted != j.To {
		if prof != j.To {
			// Something else became the boot default (a newer switch by
			// hand): the checks of j.To have nothing left to decide.
			t.say("%s is no longer the boot default (%s is): its health checks after the reboot are dropped", j.To, orNone(prof))
			st.Switch = nil
			if err := saveState(t.cfg.StateDir, *st); err != nil {
				return Outcome{}, true, err
			}
		}
		return Outcome{}, false, nil
	}
	log := newLogBuffer(t.cfg.LogMaxBytes, t.o.Out)
	act := t.activator(log)
	rep := t.newReport(st, j.Version, st.Attempt.Expected, t.o.Now())
	rep.ActualToplevel = j.To
	rep.Stage = manifest.StageSwitched
	log.Printf("host %s: booted %s (version %s, operation boot): running its health checks before confirming it", t.cfg.Host, j.To, j.Version)
	actx := context.WithoutCancel(ctx)
	ok, cause := t.checkSwitched(actx, st, &rep, log, j.To)
	if !ok {
		// The running system is the unhealthy one: back to the exact
		// previous system now (switch), not only at the next boot.
		if j.From != "" {
			// Nothing to go back to on a first installation: the
			// attempt is then recorded as failed, the system kept.
			st.AppliedVersion, st.AppliedSystem = j.FromVersion, j.From
		}
		out, err := t.rollbackOp(actx, st, &rep, log, act, j.From, activate.OpSwitch, manifest.RollbackHealthCheck, cause)
		return out, true, err
	}
	rep.Stage, rep.Result = manifest.StageConfirmed, manifest.ResultSuccess
	st.Switch = nil
	out, err = t.finishAttempt(actx, st, &rep, log, ActionApplied, nil)
	return out, true, err
}

// awaitBoot keeps the journal of a boot operation, when there are health
// checks, until the machine booted the new system: the next tick after
// the reboot runs the checks (settleBoot).
func (t *tick) awaitBoot(st *State, log *logBuffer) {
	if len(t.cfg.HealthChecks) == 0 || st.Switch == nil {
		return
	}
	st.Switch.Phase = phaseBootPending
	log.Printf("its health checks run after the reboot into it, before it is confirmed")
}
