package builder

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// JobsEnv is what DefaultJobs reads from the machine, gathered by
// SystemJobsEnv (tests build their own).
type JobsEnv struct {
	// Group is the contents of /etc/group.
	Group string
	// NixConf is the contents of nix.conf ($NIX_CONF_DIR/nix.conf, else
	// /etc/nix/nix.conf); NixConfig is $NIX_CONFIG, read after it.
	NixConf, NixConfig string
	// Root says whether bento runs as root: Nix's build-users-group is
	// "nixbld" for root and empty otherwise, unless configured.
	Root bool
	// Daemon says whether a Nix daemon's socket exists: a user's builds
	// then run in the daemon, as root, with the same nix.conf.
	Daemon bool
	CPUs   int
}

// SystemJobsEnv reads JobsEnv from this machine.
func SystemJobsEnv() JobsEnv {
	group, _ := os.ReadFile("/etc/group")
	dir := os.Getenv("NIX_CONF_DIR")
	if dir == "" {
		dir = "/etc/nix"
	}
	conf, _ := os.ReadFile(filepath.Join(dir, "nix.conf"))
	socket := os.Getenv("NIX_DAEMON_SOCKET_PATH")
	if socket == "" {
		socket = "/nix/var/nix/daemon-socket/socket"
	}
	_, err := os.Stat(socket)
	return JobsEnv{Group: string(group), NixConf: string(conf), NixConfig: os.Getenv("NIX_CONFIG"),
		Root: os.Geteuid() == 0, Daemon: err == nil, CPUs: runtime.NumCPU()}
}

// DefaultJobs is how many hosts build at once when --jobs is not given,
// and why, in a sentence for --verbose and the docs:
//
//   - With build users (the members of Nix's build-users-group), no more
//     derivations build at once machine-wide than there are build users:
//     one host per build user keeps them all busy, more only queue (each
//     waiting nix process polls for a free user). Building a NixOS system
//     mostly waits on substitution and on small derivations, not on the
//     CPUs, so this is not limited to the number of CPUs. When each host's
//     nix may build several derivations at once (max-jobs > 1), the
//     build users are shared: users / max-jobs hosts, at least the CPUs.
//   - Without build users (builds run as the calling user), nothing limits
//     Nix machine-wide: two hosts per CPU, so that the CPUs stay busy
//     while half the hosts wait on I/O.
func DefaultJobs(env JobsEnv) (int, string) {
	cpus := max(env.CPUs, 1)
	group, users, maxJobs := BuildUsers(env)
	if group == "" {
		return 2 * cpus, fmt.Sprintf("no Nix build users (build-users-group is empty): two hosts per CPU (%d CPUs)", cpus)
	}
	if users == 0 {
		return 2 * cpus, fmt.Sprintf("build-users-group %s has no members in /etc/group: two hosts per CPU (%d CPUs)", group, cpus)
	}
	if maxJobs <= 1 {
		return users, fmt.Sprintf("one host per Nix build user (%d members of %s)", users, group)
	}
	jobs := max(users/maxJobs, cpus, 1)
	return jobs, fmt.Sprintf("%d Nix build users (%s) shared by hosts building up to %d derivations each (max-jobs), at least one host per CPU", users, group, maxJobs)
}

// BuildUsers is Nix's build-users-group as configured (empty: builds run
// as the calling user), how many build users it lists, and each Nix
// process's max-jobs.
func BuildUsers(env JobsEnv) (group string, users, maxJobs int) {
	cpus := max(env.CPUs, 1)
	if env.Root || env.Daemon {
		group = "nixbld"
	}
	maxJobs = 1
	for _, text := range []string{env.NixConf, env.NixConfig} {
		if v, ok := confValue(text, "build-users-group"); ok {
			group = v
		}
		if v, ok := confValue(text, "max-jobs"); ok {
			switch n, err := strconv.Atoi(v); {
			case v == "auto":
				maxJobs = cpus
			case err == nil && n >= 0:
				maxJobs = n
			}
		}
	}
	if group == "" {
		return "", 0, maxJobs
	}
	return group, groupMembers(env.Group, group), maxJobs
}

// confValue returns the last value of key in nix.conf text (later lines
// override earlier ones, as in Nix).
func confValue(text, key string) (string, bool) {
	var val string
	var found bool
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != key {
			continue
		}
		val, found = strings.TrimSpace(v), true
	}
	return val, found
}

// groupMembers counts the members listed for group in /etc/group text:
// Nix takes its build users from that list (getgrnam's gr_mem), not from
// users whose primary group it is.
func groupMembers(etcGroup, group string) int {
	sc := bufio.NewScanner(strings.NewReader(etcGroup))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) != 4 || f[0] != group {
			continue
		}
		n := 0
		for _, m := range strings.Split(f[3], ",") {
			if strings.TrimSpace(m) != "" {
				n++
			}
		}
		return n
	}
	return 0
}
