package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/bento-nix/bento/internal/proc"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

func TestRecordFailureSummary(t *testing.T) {
	nixErr := &nix.Error{Command: []string{"nix", "build", "--no-link", "path:/var/lib/bento/tree/v1#nixosConfigurations.alpha.config.system.build.toplevel"}, ExitCode: 1,
		Message: "error: builder for '/nix/store/x.drv' failed with exit code 1", Err: errors.New("exit status 1")}
	stc := &proc.Error{Argv: []string{"/nix/store/x-system/bin/switch-to-configuration", "switch"}, ExitCode: 4,
		Output: "activating the configuration...\n  error: unit 'shop.service' failed to start", Err: errors.New("exit status 4")}
	for _, c := range []struct {
		name    string
		err     error
		summary string
	}{
		{"a build: the step and Nix's message", &stepError{"build", nixErr}, "build: error: builder for '/nix/store/x.drv' failed with exit code 1"},
		{"an activation: the step and what switch-to-configuration said", &stepError{"activation", fmt.Errorf("activate /nix/store/x-system: %w", stc)}, "activation: error: unit 'shop.service' failed to start"},
		{"a step of no command: whole", &stepError{"fetch", errors.New("connection refused")}, "fetch: connection refused"},
		{"a command of no step: whole", nixErr, nixErr.Error()},
		{"neither: whole", errors.New("attempt 2 was interrupted"), "attempt 2 was interrupted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var rep manifest.Report
			recordFailure(&rep, manifest.StageFailed, manifest.ResultFailure, c.err)
			if rep.Summary != c.summary || rep.Error != c.err.Error() {
				t.Errorf("summary %q, error %q; want %q, %q", rep.Summary, rep.Error, c.summary, c.err.Error())
			}
			addError(&rep, "state not saved: disk full")
			if want := c.summary + "; state not saved: disk full"; rep.Summary != want {
				t.Errorf("after addError: summary %q, want %q", rep.Summary, want)
			}
		})
	}
}
