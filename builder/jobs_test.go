package builder_test

import (
	"strings"
	"testing"

	"github.com/bento-nix/bento/builder"
)

func TestDefaultJobs(t *testing.T) {
	const debian = "root:x:0:\nnixbld:x:994:nixbld1,nixbld2,nixbld3,nixbld4,nixbld5,nixbld6,nixbld7,nixbld8,nixbld9,nixbld10\n"
	const custom = "builders:x:990:b1,b2,b3\nnixbld:x:994:nixbld1\n"
	cases := []struct {
		name string
		env  builder.JobsEnv
		want int
		why  string
	}{
		{"root, Debian's 10 build users", builder.JobsEnv{Group: debian, Root: true, CPUs: 2}, 10, "10 members of nixbld"},
		{"not root: no build users", builder.JobsEnv{Group: debian, CPUs: 2}, 4, "two hosts per CPU"},
		{"not root, through the daemon", builder.JobsEnv{Group: debian, Daemon: true, CPUs: 2}, 10, "10 members of nixbld"},
		{"nix.conf names another group", builder.JobsEnv{Group: custom, NixConf: "build-users-group = builders\n", Root: true, CPUs: 2}, 3, "3 members of builders"},
		{"NIX_CONFIG overrides nix.conf", builder.JobsEnv{Group: custom, NixConf: "build-users-group = builders\n", NixConfig: "sandbox = false\nbuild-users-group = nixbld", Root: true, CPUs: 2}, 1, "1 members of nixbld"},
		{"build users turned off", builder.JobsEnv{Group: debian, NixConfig: "build-users-group =", Root: true, CPUs: 8}, 16, "build-users-group is empty"},
		{"group without members", builder.JobsEnv{Group: "nixbld:x:994:\n", Root: true, CPUs: 3}, 6, "no members"},
		{"max-jobs shares the users", builder.JobsEnv{Group: debian, NixConf: "max-jobs = 4 # per process\n", Root: true, CPUs: 2}, 2, "up to 4 derivations"},
		{"max-jobs auto", builder.JobsEnv{Group: debian, NixConf: "max-jobs = auto\n", Root: true, CPUs: 2}, 5, "up to 2 derivations"},
		{"max-jobs above the users: at least the CPUs", builder.JobsEnv{Group: debian, NixConf: "max-jobs = 32\n", Root: true, CPUs: 4}, 4, "at least one host per CPU"},
		{"commented out", builder.JobsEnv{Group: debian, NixConf: "# build-users-group = \n", Root: true, CPUs: 2}, 10, "nixbld"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why := builder.DefaultJobs(tc.env)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("DefaultJobs = %d (%s), want %d (…%s…)", got, why, tc.want, tc.why)
			}
		})
	}
}

// On this machine (root, Debian's nix-bin), the default is the number of
// build users Nix itself reports using.
func TestSystemJobsEnv(t *testing.T) {
	env := builder.SystemJobsEnv()
	if env.CPUs < 1 {
		t.Fatalf("CPUs = %d", env.CPUs)
	}
	if n, why := builder.DefaultJobs(env); n < 1 || why == "" {
		t.Fatalf("DefaultJobs = %d, %q", n, why)
	}
}
