package nixtest

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// clientExample is a host configuration the module tests evaluate. The
// good ones are the configurations of TestClientDefaults, TestClientOptions,
// TestClientSecretsAtBoot and TestClientHostOption (they read them from
// here); the bad ones are the mistakes of issue 14 that the agent refuses.
type clientExample struct {
	name string
	// defs is a NixOS module body; %[1]s is the server's host key and
	// %[2]s the services.bento.package definition.
	defs string
	// assertion is the exact message of the one failed assertion ("" for
	// none); check is the line the build-time `bento agent check-config`
	// fails with ("" when it passes).
	assertion, check string
}

// cutKey is an ed25519 key blob whose last group of four is cut: it
// looks right (AAAA…) but is not base64.
const cutKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9jS0kq2w1pN9h0c3g4f5Zz7Xw8b5d1T0v3JkRrYyQ"

func clientExamples() []clientExample {
	base := func(extra string) string {
		return `services.openssh.enable = true; networking.hostName = "web-1";
		  services.bento = { enable = true; server = "bento.example.org"; serverHostKey = %[1]s; %[2]s ` + extra + ` };`
	}
	return []clientExample{
		{name: "defaults", defs: `networking.hostName = "web-1";
		  services.bento = { enable = true; server = "bento.example.org"; serverHostKey = %[1]s; %[2]s };`},
		{name: "options", defs: `networking.hostName = "pi";
		  services.bento = {
		    %[2]s
		    enable = true; server = "10.0.0.1"; port = 2222; user = "pi-sftp";
		    identityFile = "/var/lib/bento-key"; serverHostKey = %[1]s;
		    interval = "hourly"; randomizedDelaySec = "30min"; persistent = false; timeout = "1h 30min";
		    mode = "fetch"; operation = "boot"; confirmTimeout = 90;
		    reboot = { policy = "window"; window = "23:30-01:00"; command = [ "/run/current-system/sw/bin/systemctl" "kexec" ]; };
		    retry = { initialDelay = "1m30s"; maxDelay = "2 hours"; };
		    substituters = [ "http://10.0.0.1:5000" ]; trustedPublicKeys = [ "bento-1:abc=" ];
		    narinfoCacheNegativeTTL = 30;
		    trigger = { enable = true; port = 51337; };
		    tags = [ "home" "arm" ]; stateDir = "/srv/bento";
		    secrets."wg.key" = { owner = "systemd-network"; restartUnits = [ "systemd-networkd.service" ]; };
		    secrets.token = { path = "/etc/token"; mode = "0440"; group = "wheel"; };
		    extraArgs = [ "--verbose" "100%%" "$HOME" ];
		  };`},
		{name: "secrets", defs: `networking.hostName = "web-1";
		  services.bento = {
		    %[2]s
		    enable = true; server = "s"; serverHostKey = %[1]s;
		    secrets.a.restartUnits = [ "nginx.service" "x.service" ];
		    secrets.b.restartUnits = [ "nginx.service" ];
		    secrets.c = { };
		  };`},
		{name: "dotted host", defs: `services.openssh.enable = true; networking.hostName = "pi";
		  services.bento = { host = "pi.home"; enable = true; server = "s"; serverHostKey = %[1]s; %[2]s };`},
		{name: "self-update in build mode", defs: base(`selfUpdate = true; confirmTimeout = "2min";`)},
		{name: "retry without a cap", defs: base(`retry = { initialDelay = "1h"; maxDelay = "0"; };`)},
		{name: "reboot window just before midnight", defs: base(`reboot = { policy = "window"; window = "23:00-23:59"; };`)},
		{name: "servers", defs: `networking.hostName = "web-1";
		  services.bento = { enable = true; %[2]s serverOrder = "ordered";
		    servers = [ { address = "bento.example.org"; hostKey = %[1]s; } { address = "mirror.example.org"; port = 2222; hostKey = %[1]s; user = "web-1-m"; } ]; };`},
		{name: "servers and server at once", defs: base(`servers = [ { address = "mirror.example.org"; hostKey = %[1]s; } ];`),
			assertion: "services.bento.servers and services.bento.server/serverHostKey are both set on host `web-1': list every server, the primary first, in services.bento.servers only.",
			check:     "bento: agent configuration: both servers and server/serverHostKey are set: list every server, the primary first, in servers (services.bento.servers) and leave server and serverHostKey unset"},

		{name: "self-update in fetch mode", defs: base(`mode = "fetch"; selfUpdate = true;`),
			assertion: "services.bento.selfUpdate of host `web-1' needs services.bento.mode = \"build\": a host in fetch mode evaluates nothing, so it cannot update its inputs. Set selfUpdate = false or mode = \"build\".",
			check:     "bento: agent configuration: selfUpdate needs mode build: a host in fetch mode evaluates nothing"},
		{name: "initial delay above max delay", defs: base(`retry = { initialDelay = "2h"; maxDelay = "90min"; };`),
			assertion: "services.bento.retry.initialDelay (2h) of host `web-1' is longer than services.bento.retry.maxDelay (90min): the wait grows from initialDelay up to maxDelay.",
			check:     "bento: agent configuration: retry: initialDelay (2h) must not be above maxDelay (1h 30min)"},
		{name: "empty reboot command", defs: base(`reboot.command = [ ];`),
			assertion: "services.bento.reboot.command of host `web-1' is empty: give the command that reboots, such as [ \"systemctl\" \"reboot\" ].",
			check:     `bento: agent configuration: rebootCommand is empty: use e.g. ["systemctl", "reboot"]`},
		{name: "host key not base64", defs: strings.ReplaceAll(base(""), "%[1]s", nixString(cutKey)),
			assertion: "services.bento.serverHostKey of host `web-1' is not a valid key: its base64 part is cut or damaged. Copy the whole line again from the server: cat /etc/ssh/ssh_host_ed25519_key.pub",
			check:     `bento: agent configuration: serverHostKey line 1: neither a public key ("ssh-ed25519 AAAA…") nor a known_hosts line: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9jS0kq2w1pN9h0c3g4f..."`},
		// The mistakes of TestClientAssertions that the agent sees too.
		{name: "no server", defs: `networking.hostName = "web-1"; services.bento = { enable = true; serverHostKey = %[1]s; %[2]s };`,
			assertion: "services.bento.server must name the bento server (host name or address).",
			check:     "bento: agent configuration: server is not set: set services.bento.server (--server, BENTO_SERVER) to the bento server's address"},
		{name: "no server host key", defs: `networking.hostName = "web-1"; services.bento = { enable = true; server = "bento.example.org"; port = 2200; %[2]s };`,
			assertion: "services.bento.serverHostKey is not set. bento never trusts a server key on first use.\nRead the key on the server: cat /etc/ssh/ssh_host_ed25519_key.pub\n(or, checking its fingerprint out of band, ssh-keyscan -t ed25519 -p 2200 bento.example.org)\nand set services.bento.serverHostKey = \"ssh-ed25519 AAAA…\";\n",
			check:     "bento: agent configuration: serverHostKey is empty: bento never trusts a server key on first use; set it to the server's /etc/ssh/ssh_host_ed25519_key.pub"},
		{name: "server host key not a key", defs: `networking.hostName = "web-1"; services.bento = { enable = true; server = "s"; serverHostKey = "hello"; %[2]s };`,
			assertion: "services.bento.serverHostKey must be a public key such as \"ssh-ed25519 AAAA…\" or a known_hosts line, not `hello'.",
			check:     `bento: agent configuration: serverHostKey line 1: neither a public key ("ssh-ed25519 AAAA…") nor a known_hosts line: "hello"`},
		// The agent has no rule for user names (the server's deploy and
		// NixOS refuse it): the assertion is the only gate on the host.
		{name: "user of 32 characters", defs: base(`user = "a234567890123456789012345678901b";`),
			assertion: "services.bento.user `a234567890123456789012345678901b' of host `web-1' is not a usable user name (letters, digits, '.', '_', '-', at most 31 characters: NixOS refuses longer ones); set services.bento.user."},
		{name: "secret name with a slash", defs: base(`secrets."../x" = { };`),
			assertion: "services.bento.secrets.\"../x\": the name must be a plain file name and the path absolute and outside the Nix store (got `/run/bento-secrets/../x').",
			check:     `bento: agent configuration: secrets: invalid secret name "../x": names must match ^[A-Za-z0-9_][A-Za-z0-9._-]*$ (they become file names); rename the file`},
		// Health checks (issue 18).
		{name: "health checks", defs: base(`healthChecks = { nginx = { unit = "nginx.service"; continuous = true; }; site.http.url = "http://127.0.0.1/health"; db = { command = [ "/bin/true" ]; user = "nobody"; settle = "10s"; }; };`)},
		{name: "health check of two kinds", defs: base(`healthChecks.web = { unit = "nginx.service"; command = [ "true" ]; };`),
			assertion: "services.bento.healthChecks.\"web\" of host `web-1' must set exactly one of unit, command (not empty) and http.",
			check:     "bento: agent configuration: healthChecks.web: set exactly one of unit, command and http (2 set)"},
		{name: "health check timeout of an hour", defs: base(`healthChecks.web = { unit = "nginx.service"; timeout = "1h"; };`),
			assertion: "services.bento.healthChecks.\"web\" of host `web-1': the name must be letters, digits, '_', '-', '.' (at most 64), timeout from 1ms to 10min, interval at most 10min, settle at most 30min (got timeout 1h, interval 5s, settle 0s).",
			check:     "bento: agent configuration: healthChecks.web: timeout 1h is out of range: it must be from 1ms to 10min"},
		// Ranges only the agent knows: the build-time check stops them.
		{name: "confirm timeout of two days", defs: base(`confirmTimeout = "2d";`),
			check: "bento: agent configuration: confirmTimeout 2d is out of range: it must be from 1s to 1d"},
		{name: "max delay of sixty days", defs: base(`retry = { initialDelay = "1d"; maxDelay = "60d"; };`),
			check: "bento: agent configuration: retry.maxDelay 60d is out of range: it must be from 0 to 30d"},
	}
}

// exampleDefs is the named example as a module, with the package stand-in.
func exampleDefs(t testing.TB, name, key string) string {
	t.Helper()
	for _, e := range clientExamples() {
		if e.name == name {
			return "{ " + fmt.Sprintf(e.defs, nixString(key), "") + " }"
		}
	}
	t.Fatalf("no client example %q", name)
	return ""
}

// Every example configuration, good and bad, through both gates: the
// module's assertions (nix eval) and the check derivation it adds to
// system.checks, built for real, which runs `bento agent check-config` on
// the generated agent.json.
func TestClientConfigCheck(t *testing.T) {
	needNix(t)
	bin := bentoBinary(t)
	pkg := filepath.Dir(filepath.Dir(bin))
	key := publicKey(t)
	pkgDef := fmt.Sprintf(`package = { type = "derivation"; name = "bento"; outPath = %s; };`, nixString(pkg))
	module := nixString(filepath.Join(repoRoot(t), "modules/default.nix"))
	for _, e := range clientExamples() {
		t.Run(e.name, func(t *testing.T) {
			defs := "{ " + fmt.Sprintf(e.defs, nixString(key), pkgDef) + " }"
			var failed []string
			hostEval(t, []string{module, defs}, failedAssertions, &failed)
			var want []string
			if e.assertion != "" {
				want = []string{e.assertion}
			}
			if !reflect.DeepEqual(failed, want) && !(len(failed) == 0 && len(want) == 0) {
				t.Errorf("failed assertions:\n%q\nwant\n%q", failed, want)
			}

			var checks []string
			hostEval(t, []string{module, defs}, `c: map (d: d.drvPath) c.system.checks`, &checks)
			if len(checks) != 1 {
				t.Fatalf("system.checks = %q, want the agent configuration check", checks)
			}
			out, err := runErr(t, "", "nix-store", "--realise", checks[0])
			if e.check == "" {
				if err != nil {
					t.Fatalf("the check derivation fails on a good configuration: %v", err)
				}
				data, err := os.ReadFile(strings.TrimSpace(out))
				if err != nil || !regexp.MustCompile(`^bento: the agent configuration for host \S+ is valid\n$`).Match(data) {
					t.Errorf("check output %q (%v), want the agent's verdict", data, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("the check derivation passed; want it to fail with %q", e.check)
			}
			if got := buildLog(err.Error()); !slices.Contains(got, e.check) {
				t.Errorf("the check failed with\n%s\nwant the line\n%s", strings.Join(got, "\n"), e.check)
			}
		})
	}
}

// buildLog is the lines of a failed build's error (nix-store prints the
// builder's output as it is; nix build quotes it with "> ").
func buildLog(msg string) []string {
	var lines []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		if rest, ok := strings.CutPrefix(l, "> "); ok {
			l = rest
		}
		lines = append(lines, l)
	}
	return lines
}
