package nixtest

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/bento-nix/bento/internal/timespan"
)

// services.bento-server.history.retention reaches the deploy timer and
// the admin's environment, as a span bento accepts.
func TestServerHistoryRetention(t *testing.T) {
	needNix(t)
	module := nixString(filepath.Join(repoRoot(t), "modules/default.nix"))
	for _, tc := range []struct{ name, defs, want string }{
		{"default", ``, "90d"},
		{"set", `history.retention = "1y";`, "1y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r reportsResult
			hostEval(t, []string{module, fmt.Sprintf(`{ services.bento-server = {
			  enable = true; flake = "/srv/fleet"; deploy.enable = true; hosts.web-1 = { };
			  %s
			}; }`, tc.defs)}, reportsSelect, &r)
			if len(r.Failed) != 0 {
				t.Fatalf("failed assertions: %q", r.Failed)
			}
			if r.Variables["BENTO_HISTORY_RETENTION"] != tc.want || r.DeployEnv["BENTO_HISTORY_RETENTION"] != tc.want {
				t.Errorf("environment %v, deploy environment %v: want BENTO_HISTORY_RETENTION=%s", r.Variables, r.DeployEnv, tc.want)
			}
			if d, err := timespan.Parse(tc.want); err != nil || d <= 0 {
				t.Errorf("bento would refuse %q: %v", tc.want, err)
			}
		})
	}
}
