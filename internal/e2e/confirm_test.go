package e2e

import (
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// A server that is away for a moment after the switch (a network restart
// during activation) and back within confirmTimeout is not a loss: no
// rollback, the new system stays and is confirmed.
func TestShortOutageAfterSwitchIsNotARollback(t *testing.T) {
	e, h, _ := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	h.Settings["confirmTimeout"] = "2m"
	start, switches := recordFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	e.SSHD.Stop()
	start()
	// At least one probe found the server gone; then it comes back.
	run.WaitFor(t, "confirmation probe 1:")
	e.SSHD.Restart(t)
	res := run.Wait(t)
	if res.ExitCode != 0 {
		t.Fatalf("exit %d after an outage shorter than confirmTimeout", res.ExitCode)
	}
	if got := switches(); len(got) != 1 || got[0] != v2.Built+" switch" {
		t.Errorf("switches %q, want only the new system (no rollback)", got)
	}
	if h.ProfileTarget(t) != v2.Built || h.Current(t) != v2.Built {
		t.Errorf("profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v2.Built)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultSuccess || st.Stage != manifest.StageConfirmed || st.RollbackReason != "" ||
		st.AppliedVersion != v2.Version {
		t.Errorf("status after a short outage: %+v", st)
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "confirmation probe 1:") || !strings.Contains(log, "confirmed") {
		t.Errorf("the log does not show the failed probe and the confirmation:\n%s", log)
	}
}
