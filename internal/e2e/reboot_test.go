package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/internal/fixture"
)

// kernelUpdate applies generation 1, boots it, then publishes a new
// kernel with the given reboot settings and runs a tick.
func kernelUpdate(t *testing.T, reboot map[string]any) (*Env, *Host, Published, Result) {
	t.Helper()
	e, h, _ := applied(t, hostsFleet("alpha"))
	h.Boot(t)
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.Kernel = "2", "2" })
	v2 := e.Publish(t)["alpha"]
	h.Settings["reboot"] = reboot
	res := h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("kernel update: exit %d", res.ExitCode)
	}
	if h.Current(t) != v2.Built {
		t.Fatalf("kernel update not switched to")
	}
	return e, h, v2, res
}

func TestKernelChangeRebootPolicyNever(t *testing.T) {
	_, h, _, _ := kernelUpdate(t, map[string]any{"policy": "never"})
	st := h.Status(t)
	if !st.RebootRequired || st.RebootScheduled != nil || len(h.Reboots(t)) != 0 {
		t.Errorf("policy never: reboot required %v, scheduled %v, reboots %q", st.RebootRequired, st.RebootScheduled, h.Reboots(t))
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "reboot required: kernel changed since boot") {
		t.Errorf("the log does not say what changed:\n%s", log)
	}
	// Still reported on idle ticks, until the host boots the new system.
	h.Run(t)
	if st := h.Status(t); !st.RebootRequired {
		t.Error("an idle tick forgot that a reboot is required")
	}
	h.Boot(t)
	h.Run(t)
	if st := h.Status(t); st.RebootRequired {
		t.Error("still reboot-required after booting the new system")
	}
}

func TestKernelChangeRebootPolicyNow(t *testing.T) {
	_, h, _, _ := kernelUpdate(t, map[string]any{"policy": "now"})
	if got := h.Reboots(t); len(got) != 1 {
		t.Fatalf("policy now: reboot command ran %d times, want once", len(got))
	}
	st := h.Status(t)
	if !st.RebootRequired || st.RebootScheduled == nil {
		t.Errorf("policy now: status %+v", st)
	}
	// The report was written before the reboot, and a reboot that has
	// been done is not done again.
	h.Run(t)
	if got := h.Reboots(t); len(got) != 1 {
		t.Errorf("the next tick rebooted again: %q", got)
	}
}

func TestKernelChangeRebootPolicyWindow(t *testing.T) {
	// A window that opens an hour from now: the reboot is planned, not run.
	now := time.Now()
	from, to := now.Add(time.Hour), now.Add(2*time.Hour)
	window := fmt.Sprintf("%02d:%02d-%02d:%02d", from.Hour(), from.Minute(), to.Hour(), to.Minute())
	e, h, _, _ := kernelUpdate(t, map[string]any{"policy": "window", "window": window})
	st := h.Status(t)
	if !st.RebootRequired || st.RebootScheduled == nil || len(h.Reboots(t)) != 0 {
		t.Fatalf("policy window: required %v, scheduled %v, reboots %q", st.RebootRequired, st.RebootScheduled, h.Reboots(t))
	}
	at := st.RebootScheduled.Local()
	if at.Before(from.Add(-time.Minute)) || at.After(to.Add(time.Minute)) {
		t.Errorf("reboot planned at %s, outside the window %s", at, window)
	}
	p, err := activate.LoadPending(h.StateDir)
	if err != nil || p == nil {
		t.Fatalf("no pending reboot recorded: %v", err)
	}

	// Time passes (the planned moment is moved into the past): the next
	// tick reboots.
	p.At = time.Now().Add(-time.Minute)
	if err := activate.SavePending(h.StateDir, *p); err != nil {
		t.Fatal(err)
	}
	res := h.Run(t)
	if got := h.Reboots(t); len(got) != 1 || !strings.Contains(res.Output(), "rebooting into") {
		t.Errorf("a due reboot did not run: reboots %q", got)
	}

	// Another kernel update, then a newer generation going back to the
	// booted kernel: the pending reboot is cancelled.
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.Kernel = "3", "3" })
	e.Publish(t)
	h.Run(t)
	if p, _ := activate.LoadPending(h.StateDir); p == nil {
		t.Fatal("kernel 3 planned no reboot")
	}
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.Kernel = "4", "1" })
	e.Publish(t)
	h.Run(t)
	if p, _ := activate.LoadPending(h.StateDir); p != nil {
		t.Errorf("a generation with the booted kernel did not cancel the pending reboot: %+v", p)
	}
	if st := h.Status(t); st.RebootRequired || st.RebootScheduled != nil {
		t.Errorf("status still asks for a reboot: %+v", st)
	}
	if got := h.Reboots(t); len(got) != 1 {
		t.Errorf("reboots %q, want only the one that was due", got)
	}
}
