package e2e

import (
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// A first activation that fails has nothing to roll back to: the host is
// failing, and its report carries no rollback reason (status would show a
// rollback that never happened).
func TestFailedFirstActivationHasNoRollbackReason(t *testing.T) {
	e := Start(t, fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}, FailSwitch: true}}})
	e.Publish(t)
	h := e.Host(t, "alpha")
	res := h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "nothing to roll back to") {
		t.Fatalf("first activation failing: exit %d", res.ExitCode)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultFailure || st.Stage != manifest.StageFailed || st.RollbackReason != "" {
		t.Errorf("report: result %q, stage %q, rollbackReason %q; want failure, failed, no reason", st.Result, st.Stage, st.RollbackReason)
	}
}
