package nixtest

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type reportsResult struct {
	Failed      []string          `json:"failed"`
	Variables   map[string]string `json:"variables"`
	FileSystems map[string]struct {
		Device  string   `json:"device"`
		FSType  string   `json:"fsType"`
		Options []string `json:"options"`
	} `json:"fileSystems"`
	ExecStart string            `json:"execStart"`
	DeployEnv map[string]string `json:"deployEnv"`
}

const reportsSelect = `c: {
  failed = (` + failedAssertions + `) c;
  variables = c.environment.variables;
  fileSystems = c.fileSystems;
  execStart = c.systemd.services.bento-deploy.serviceConfig.ExecStart or "";
  deployEnv = c.systemd.services.bento-deploy.environment or { };
}`

// services.bento-server.reports: the limits reach the deploy timer's
// command line and the admin's environment, and reports.tmpfs gives each
// host a filesystem of exactly those limits.
func TestServerReportsLimits(t *testing.T) {
	needNix(t)
	module := nixString(filepath.Join(repoRoot(t), "modules/default.nix"))
	for _, tc := range []struct {
		name, defs   string
		bytes, files string
		tmpfs        bool
	}{
		{"defaults", ``, "67108864", "500", false},
		{"set, with tmpfs", `reports = { maxBytes = 1048576; maxFiles = 40; tmpfs = true; };`, "1048576", "40", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r reportsResult
			hostEval(t, []string{module, fmt.Sprintf(`{ services.bento-server = {
			  enable = true; flake = "/srv/fleet"; deploy.enable = true; hosts.web-1 = { }; hosts.db = { };
			  %s
			}; }`, tc.defs)}, reportsSelect, &r)
			if len(r.Failed) != 0 {
				t.Fatalf("failed assertions: %q", r.Failed)
			}
			if r.Variables["BENTO_REPORTS_MAX_BYTES"] != tc.bytes || r.Variables["BENTO_REPORTS_MAX_FILES"] != tc.files || r.Variables["BENTO_HOST_GROUP"] != "bento" || r.DeployEnv["BENTO_HOST_GROUP"] != "bento" {
				t.Errorf("environment.variables = %v, want the limits %s and %s", r.Variables, tc.bytes, tc.files)
			}
			argv := splitExec(t, r.ExecStart)
			if !strings.Contains(strings.Join(argv, " "), "--reports-max-bytes "+tc.bytes+" --reports-max-files "+tc.files) {
				t.Errorf("deploy command line %q lacks the limits", argv)
			}
			if !tc.tmpfs {
				if len(r.FileSystems) != 0 {
					t.Errorf("fileSystems without reports.tmpfs: %v", r.FileSystems)
				}
				return
			}
			for _, host := range []string{"web-1", "db"} {
				fs, ok := r.FileSystems["/home/chroot/"+host+"/reports"]
				want := []string{"size=" + tc.bytes, "nr_inodes=41", "mode=0755", "nosuid", "nodev", "noexec"}
				if !ok || fs.FSType != "tmpfs" || !reflect.DeepEqual(fs.Options, want) {
					t.Errorf("%s: fileSystems = %+v, want a tmpfs with %v", host, r.FileSystems, want)
				}
			}
		})
	}
}
