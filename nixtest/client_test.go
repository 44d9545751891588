package nixtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// unit is a systemd.services/timers/sockets entry as the module defines it.
type unit struct {
	Description      string            `json:"description"`
	Wants            []string          `json:"wants"`
	After            []string          `json:"after"`
	Before           []string          `json:"before"`
	Requires         []string          `json:"requires"`
	WantedBy         []string          `json:"wantedBy"`
	Path             []string          `json:"path"`
	Environment      map[string]string `json:"environment"`
	RestartIfChanged *bool             `json:"restartIfChanged"`
	UnitConfig       map[string]any    `json:"unitConfig"`
	ServiceConfig    map[string]any    `json:"serviceConfig"`
	TimerConfig      map[string]any    `json:"timerConfig"`
}

type clientResult struct {
	Failed   []string        `json:"failed"`
	Warnings []string        `json:"warnings"`
	Services map[string]unit `json:"services"`
	Timers   map[string]unit `json:"timers"`
	Sockets  map[string]any  `json:"sockets"`
	Tmpfiles []string        `json:"tmpfiles"`
	Etc      map[string]struct {
		Source string `json:"source"`
	} `json:"etc"`
	Packages []string       `json:"packages"`
	Bento    map[string]any `json:"bento"`
}

const clientSelect = `c: {
  failed = (` + failedAssertions + `) c;
  warnings = c.warnings;
  services = c.systemd.services;
  timers = c.systemd.timers;
  sockets = c.systemd.sockets;
  tmpfiles = c.systemd.tmpfiles.rules;
  etc = c.environment.etc;
  packages = map toString c.environment.systemPackages;
  bento = removeAttrs c.services.bento [ "package" ];
}`

// evalClient evaluates the client module (through nixosModules.default's
// file, so the server module is there too) with the given definitions.
func evalClient(t testing.TB, defs string) clientResult {
	t.Helper()
	var r clientResult
	hostEval(t, []string{nixString(filepath.Join(repoRoot(t), "modules/default.nix")), defs}, clientSelect, &r)
	return r
}

// agentJSON reads the configuration file the unit's ExecStart names.
func agentJSON(t testing.TB, argv []string) map[string]any {
	t.Helper()
	i := indexOf(argv, "--config")
	if i < 0 || i+1 >= len(argv) {
		t.Fatalf("no --config FILE in %q", argv)
	}
	data, err := os.ReadFile(argv[i+1])
	if err != nil {
		t.Fatalf("the agent's configuration: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s is not JSON: %v", argv[i+1], err)
	}
	return m
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// The JSON keys the agent reads: the contract between module and agent.
var agentKeys = []string{
	"bootedSystem", "confirmTimeout", "currentSystem", "host", "identityFile", "mode",
	"narinfoCacheNegativeTTL", "operation", "port", "profile", "reboot", "rebootCommand",
	"retry", "secrets", "selfUpdate", "server", "serverHostKey", "stateDir",
	"substituters", "trigger", "trustedPublicKeys", "user",
}

func TestClientDefaults(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	r := evalClient(t, exampleDefs(t, "defaults", key))
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	// Nothing creates the default identity file (the host key) without sshd.
	if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "services.openssh is off") {
		t.Errorf("warnings = %q, want the one about the missing host key", r.Warnings)
	}
	if w := evalClient(t, fmt.Sprintf(`{ services.openssh.enable = true; services.bento = { enable = true; server = "s"; serverHostKey = %s; }; }`, nixString(key))).Warnings; len(w) != 0 {
		t.Errorf("warnings with sshd on: %q", w)
	}

	svc, ok := r.Services["bento-agent"]
	if !ok || len(r.Services) != 1 {
		t.Fatalf("services = %v, want only bento-agent", keys(r.Services))
	}
	sc := svc.ServiceConfig
	for k, want := range map[string]any{
		"Type": "oneshot", "KillMode": "process", "TimeoutStartSec": "2h", "TimeoutStopSec": "120s",
		"LockPersonality": true, "RestrictRealtime": true, "SystemCallArchitectures": "native",
	} {
		if !reflect.DeepEqual(sc[k], want) {
			t.Errorf("serviceConfig.%s = %v, want %v", k, sc[k], want)
		}
	}
	// Hardening that would break switch-to-configuration stays off.
	for _, k := range []string{"ProtectSystem", "ProtectHome", "PrivateDevices", "NoNewPrivileges", "RestrictSUIDSGID", "ProtectKernelModules", "PrivateTmp", "UMask"} {
		if _, set := sc[k]; set {
			t.Errorf("serviceConfig.%s is set; the agent must be able to switch the system", k)
		}
	}
	if svc.RestartIfChanged == nil || *svc.RestartIfChanged || svc.UnitConfig["X-StopOnRemoval"] != false {
		t.Errorf("a switch could stop the agent that runs it: restartIfChanged %v, unitConfig %v", svc.RestartIfChanged, svc.UnitConfig)
	}
	if !slices.Contains(svc.Wants, "network-online.target") || !slices.Contains(svc.After, "network-online.target") {
		t.Errorf("wants %v, after %v", svc.Wants, svc.After)
	}
	if svc.Environment["NIX_REMOTE"] != "daemon" || svc.Environment["HOME"] != "/root" {
		t.Errorf("environment %v", svc.Environment)
	}
	for _, want := range []string{"-nix", "-openssh", "-git-minimal", "-systemd"} {
		if !anyHasSuffix(svc.Path, want) {
			t.Errorf("path %v lacks %s", svc.Path, want)
		}
	}

	argv := splitExec(t, sc["ExecStart"].(string))
	if len(argv) != 5 || !strings.HasSuffix(argv[0], "-bento/bin/bento") || !reflect.DeepEqual(argv[1:4], []string{"agent", "run", "--config"}) || !strings.HasSuffix(argv[4], "-bento-agent.json") {
		t.Errorf("ExecStart = %q", argv)
	}
	conf := agentJSON(t, argv)
	if got := keys(conf); !reflect.DeepEqual(got, agentKeys) {
		t.Errorf("agent configuration keys = %v\nwant %v", got, agentKeys)
	}
	want := map[string]any{
		"host": "web-1", "server": "bento.example.org", "port": 22.0, "user": "web-1",
		"identityFile": "/etc/ssh/ssh_host_ed25519_key", "serverHostKey": key,
		"stateDir": "/var/lib/bento", "mode": "build", "operation": "switch",
		"confirmTimeout": "60s",
		"reboot":         map[string]any{"policy": "never", "window": "03:00-05:00"},
		"retry":          map[string]any{"initialDelay": "15min", "maxDelay": "6h"},
		"substituters":   []any{}, "trustedPublicKeys": []any{},
		"narinfoCacheNegativeTTL": 0.0, "selfUpdate": false,
		"profile": "/nix/var/nix/profiles/system", "currentSystem": "/run/current-system", "bootedSystem": "/run/booted-system",
		"rebootCommand": []any{"/nix/store/00000000000000000000000000000000-systemd/bin/systemctl", "reboot"},
		"secrets":       map[string]any{},
	}
	for k, v := range want {
		if !reflect.DeepEqual(conf[k], v) {
			t.Errorf("agent configuration %s = %#v, want %#v", k, conf[k], v)
		}
	}
	if r.Etc["bento/agent.json"].Source != argv[4] {
		t.Errorf("/etc/bento/agent.json = %q, want the unit's %q", r.Etc["bento/agent.json"].Source, argv[4])
	}

	timer := r.Timers["bento-agent"]
	if len(r.Timers) != 1 || !reflect.DeepEqual(timer.TimerConfig, map[string]any{"OnCalendar": "*:0/10", "RandomizedDelaySec": "5min", "Persistent": true}) || !reflect.DeepEqual(timer.WantedBy, []string{"timers.target"}) {
		t.Errorf("timers = %+v", r.Timers)
	}
	if len(r.Sockets) != 0 {
		t.Errorf("trigger sockets without trigger.enable: %v", keys(r.Sockets))
	}
	if !reflect.DeepEqual(r.Tmpfiles, []string{"d /var/lib/bento 0700 root root -"}) {
		t.Errorf("tmpfiles = %q", r.Tmpfiles)
	}
	if !anyHasSuffix(r.Packages, "-bento") {
		t.Errorf("bento is not on the PATH: %v", r.Packages)
	}
	// What the server's discovery reads (eval/eval.go) is there by these names.
	for k, v := range map[string]any{"enable": true, "user": "web-1", "server": "bento.example.org", "port": 22.0, "mode": "build", "operation": "switch", "interval": "*:0/10", "tags": []any{}, "hostPublicKey": nil} {
		if !reflect.DeepEqual(r.Bento[k], v) {
			t.Errorf("services.bento.%s = %#v, want %#v", k, r.Bento[k], v)
		}
	}
}

func TestClientOptions(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	r := evalClient(t, exampleDefs(t, "options", key))
	if len(r.Failed)+len(r.Warnings) != 0 {
		t.Fatalf("failed assertions: %q, warnings %q", r.Failed, r.Warnings)
	}
	svc := r.Services["bento-agent"]
	argv := splitExec(t, svc.ServiceConfig["ExecStart"].(string))
	if got := argv[5:]; !reflect.DeepEqual(got, []string{"--verbose", "100%", "$HOME"}) {
		t.Errorf("extraArgs in ExecStart = %q", got)
	}
	if svc.ServiceConfig["TimeoutStartSec"] != "1h 30min" || svc.ServiceConfig["TimeoutStopSec"] != "150s" {
		t.Errorf("TimeoutStartSec = %v, TimeoutStopSec = %v", svc.ServiceConfig["TimeoutStartSec"], svc.ServiceConfig["TimeoutStopSec"])
	}
	conf := agentJSON(t, argv)
	for k, v := range map[string]any{
		"host": "pi", "server": "10.0.0.1", "port": 2222.0, "user": "pi-sftp", "identityFile": "/var/lib/bento-key",
		"stateDir": "/srv/bento", "mode": "fetch", "operation": "boot", "confirmTimeout": "90s",
		"reboot":                  map[string]any{"policy": "window", "window": "23:30-01:00"},
		"rebootCommand":           []any{"/run/current-system/sw/bin/systemctl", "kexec"},
		"retry":                   map[string]any{"initialDelay": "1m30s", "maxDelay": "2 hours"},
		"trigger":                 map[string]any{"allowedGroups": []any{"wheel"}},
		"substituters":            []any{"http://10.0.0.1:5000"},
		"trustedPublicKeys":       []any{"bento-1:abc="},
		"narinfoCacheNegativeTTL": 30.0, "selfUpdate": false,
		"secrets": map[string]any{
			"wg.key": map[string]any{"path": "/run/bento-secrets/wg.key", "owner": "systemd-network", "group": "root", "mode": "0400", "restartUnits": []any{"systemd-networkd.service"}},
			"token":  map[string]any{"path": "/etc/token", "owner": "root", "group": "wheel", "mode": "0440", "restartUnits": []any{}},
		},
	} {
		if !reflect.DeepEqual(conf[k], v) {
			t.Errorf("agent configuration %s = %#v, want %#v", k, conf[k], v)
		}
	}
	if r.Etc["bento/agent.json"].Source != argv[4] {
		t.Errorf("/etc/bento/agent.json = %q, want the unit's %q", r.Etc["bento/agent.json"].Source, argv[4])
	}
	if got := r.Timers["bento-agent"].TimerConfig; !reflect.DeepEqual(got, map[string]any{"OnCalendar": "hourly", "RandomizedDelaySec": "30min", "Persistent": false}) {
		t.Errorf("timerConfig = %v", got)
	}

	// The trigger: one server on the unix socket and on 127.0.0.1 (one
	// tick at a time across both), as protected from switches as the agent.
	if !reflect.DeepEqual(r.Tmpfiles, []string{"d /srv/bento 0700 root root -", "d /run/bento 0755 root root -"}) {
		t.Errorf("tmpfiles = %q", r.Tmpfiles)
	}
	trig := r.Services["bento-trigger"]
	targv := splitExec(t, trig.ServiceConfig["ExecStart"].(string))
	// Its ticks read the current configuration through /etc, not the store
	// file it started with (a configuration change alone does not restart it).
	if want := []string{argv[0], "agent", "trigger-server", "--config", "/etc/bento/agent.json", "--listen", "unix:/run/bento/trigger.sock", "--listen", "127.0.0.1:51337"}; !reflect.DeepEqual(targv, want) {
		t.Errorf("bento-trigger: ExecStart = %q, want %q", targv, want)
	}
	// A new bento restarts it; KillMode=process keeps a running tick
	// (TestTriggerRestartKeepsTheTick runs that for real).
	if trig.RestartIfChanged == nil || !*trig.RestartIfChanged || len(trig.UnitConfig) != 0 || trig.ServiceConfig["KillMode"] != "process" ||
		trig.ServiceConfig["Type"] != "simple" || !slices.Contains(trig.WantedBy, "multi-user.target") {
		t.Errorf("bento-trigger = %+v", trig)
	}
	if want := []string{"bento-agent", "bento-secrets", "bento-trigger"}; !reflect.DeepEqual(keys(r.Services), want) || len(r.Sockets) != 0 {
		t.Errorf("services %v (want %v), sockets %v", keys(r.Services), want, keys(r.Sockets))
	}
	for k, v := range map[string]any{"user": "pi-sftp", "mode": "fetch", "tags": []any{"home", "arm"}, "interval": "hourly", "port": 2222.0} {
		if !reflect.DeepEqual(r.Bento[k], v) {
			t.Errorf("services.bento.%s = %#v, want %#v", k, r.Bento[k], v)
		}
	}
}

// Secrets under /run are gone after a reboot: bento-secrets puts them back
// from the agent's local copies at boot, before the units that read them
// and before the agent, and can neither fail nor hang a switch that adds it.
func TestClientSecretsAtBoot(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	r := evalClient(t, exampleDefs(t, "secrets", key))
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	svc, ok := r.Services["bento-secrets"]
	if !ok {
		t.Fatalf("no bento-secrets service: %v", keys(r.Services))
	}
	if want := []string{"bento-agent.service", "nginx.service", "x.service"}; !reflect.DeepEqual(svc.Before, want) {
		t.Errorf("before = %q, want %q", svc.Before, want)
	}
	if !reflect.DeepEqual(svc.WantedBy, []string{"multi-user.target"}) || !reflect.DeepEqual(svc.After, []string{"sysinit.target"}) || len(svc.Wants) != 0 {
		t.Errorf("wantedBy %q, wants %q, after %q: want a boot unit that needs no network", svc.WantedBy, svc.Wants, svc.After)
	}
	// Not after basic.target: early consumers (systemd-networkd) can wait for it.
	if svc.UnitConfig["DefaultDependencies"] != false {
		t.Errorf("unitConfig = %v, want DefaultDependencies = false", svc.UnitConfig)
	}
	if svc.RestartIfChanged == nil || *svc.RestartIfChanged || svc.UnitConfig["X-StopOnRemoval"] != false {
		t.Errorf("a switch would restart bento-secrets while the agent holds its lock: %+v", svc)
	}
	if svc.ServiceConfig["Type"] != "oneshot" || svc.ServiceConfig["RemainAfterExit"] != true {
		t.Errorf("serviceConfig = %v", svc.ServiceConfig)
	}
	argv := secretsArgv(t, svc)
	agent := splitExec(t, r.Services["bento-agent"].ServiceConfig["ExecStart"].(string))
	if want := []string{agent[0], "agent", "install-secrets", "--config", agent[4], "--no-restart", "--lock-wait", "5s"}; !reflect.DeepEqual(argv, want) {
		t.Errorf("ExecStart = %q, want %q", argv, want)
	}

	// Without secrets there is nothing to put back.
	r = evalClient(t, fmt.Sprintf(`{ services.bento = { enable = true; server = "s"; serverHostKey = %s; }; }`, nixString(key)))
	if _, ok := r.Services["bento-secrets"]; ok {
		t.Errorf("bento-secrets without secrets")
	}
}

// secretsArgv is bento-secrets' command line; "-" (a failure does not
// fail a switch) must prefix it.
func secretsArgv(t testing.TB, u unit) []string {
	t.Helper()
	line, _ := u.ServiceConfig["ExecStart"].(string)
	rest, ok := strings.CutPrefix(line, "-")
	if !ok {
		t.Fatalf("bento-secrets: ExecStart %q lacks the \"-\" prefix: its failure would fail the switch that adds it", line)
	}
	return splitExec(t, rest)
}

func TestClientDisabled(t *testing.T) {
	needNix(t)
	r := evalClient(t, `{ services.bento.server = "x"; }`)
	if len(r.Services)+len(r.Timers)+len(r.Sockets)+len(r.Tmpfiles)+len(r.Etc)+len(r.Packages)+len(r.Failed) != 0 {
		t.Errorf("a disabled module defines something: %+v", r)
	}
	if r.Bento["user"] != "nixos" {
		t.Errorf("user = %v, want the host name", r.Bento["user"])
	}
}

// Mistakes are stopped at evaluation, with a message that says what to do.
func TestClientAssertions(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	base := fmt.Sprintf(`enable = true; server = "bento.example.org"; serverHostKey = %s;`, nixString(key))
	// A path literal (a harmless file: the test's own selection copies it).
	keyFile := filepath.Join(t.TempDir(), "bento_key")
	if err := os.WriteFile(keyFile, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, defs, want string }{
		{"no server", fmt.Sprintf(`enable = true; serverHostKey = %s;`, nixString(key)), "services.bento.server must name the bento server"},
		{"no host key", `enable = true; server = "bento.example.org"; port = 2200;`, "ssh-keyscan -t ed25519 -p 2200 bento.example.org"},
		{"bad host key", `enable = true; server = "s"; serverHostKey = "hello";`, "must be a public key"},
		{"key as path literal", base + ` identityFile = ` + keyFile + `;`, "outside the Nix store"},
		{"key in the store", base + ` identityFile = "/nix/store/aaaa-key";`, "outside the Nix store"},
		{"bad user", base + ` user = "a/b";`, "is not a usable user name"},
		{"long user", base + ` user = "` + strings.Repeat("a", 33) + `";`, "is not a usable user name"},
		{"trigger port 0", base + ` trigger = { enable = true; port = 0; };`, "trigger.port must be a port number"},
		{"secret name", base + ` secrets."../x" = { };`, `services.bento.secrets."../x"`},
		{"secret path", base + ` secrets.x.path = "relative";`, `services.bento.secrets."x"`},
		{"secret in store", base + ` secrets.x.path = "/nix/store/x";`, "outside the Nix store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := evalClient(t, `{ services.bento = { `+tc.defs+` }; }`)
			if !strings.Contains(strings.Join(r.Failed, "\n"), tc.want) {
				t.Errorf("failed assertions %q, want one containing %q", r.Failed, tc.want)
			}
		})
	}
	// A known_hosts line is a valid server key.
	r := evalClient(t, fmt.Sprintf(`{ services.bento = { enable = true; server = "s"; serverHostKey = %s; }; }`, nixString("[s]:2222 "+key)))
	if len(r.Failed) != 0 {
		t.Errorf("a known_hosts line was refused: %q", r.Failed)
	}
	// Wrong types are evaluation errors naming the option.
	for _, tc := range []struct{ defs, option string }{
		{`mode = "push";`, "services.bento.mode"},
		{`operation = "dry-activate";`, "services.bento.operation"},
		{`reboot.policy = "sometimes";`, "services.bento.reboot.policy"},
		{`reboot.window = "3-5";`, "services.bento.reboot.window"},
		{`reboot.window = "23:00-24:00";`, "services.bento.reboot.window"},
		{`reboot.window = "29:00-29:30";`, "services.bento.reboot.window"},
		{`retry.initialDelay = "15 mins";`, "services.bento.retry.initialDelay"},
		{`retry.maxDelay = "";`, "services.bento.retry.maxDelay"},
		{`confirmTimeout = 0;`, "services.bento.confirmTimeout"},
		{`confirmTimeout = "soon";`, "services.bento.confirmTimeout"},
		{`randomizedDelaySec = "5 min later";`, "services.bento.randomizedDelaySec"},
		{`timeout = "forever";`, "services.bento.timeout"},
		{`port = 70000;`, "services.bento.port"},
		{`secrets.x.mode = "rw";`, "services.bento.secrets.x.mode"},
		// Not a unit name: refused on the secret, not on bento-secrets' Before=.
		{`secrets.x.restartUnits = [ "nginx" ];`, "services.bento.secrets.x.restartUnits"},
		{`nonsense = true;`, "services.bento.nonsense' does not exist"},
	} {
		_, err := evalErr(t, hostExpr(t, []string{nixString(filepath.Join(repoRoot(t), "modules/client.nix")), `{ services.bento = { ` + base + tc.defs + ` }; }`}, clientSelect))
		if err == nil || !strings.Contains(err.Error(), tc.option) {
			t.Errorf("%s: err = %v, want an error naming %s", tc.defs, err, tc.option)
		}
	}
}

func anyHasSuffix(list []string, suffix string) bool {
	for _, s := range list {
		if strings.HasSuffix(s, suffix) {
			return true
		}
	}
	return false
}

// services.bento.host names the host as the fleet does: a dotted attribute
// name, which networking.hostName can never hold, reaches agent.json and the
// default SFTP user; a user name NixOS would refuse is refused here first,
// naming the host.
func TestClientHostOption(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	cases := []struct {
		name, defs     string
		host, user     string
		failedContains string
	}{
		{name: "default is hostName", defs: `networking.hostName = "web-1";`, host: "web-1", user: "web-1"},
		{name: "dotted attribute name", defs: `networking.hostName = "pi"; services.bento.host = "pi.home";`, host: "pi.home", user: "pi.home"},
		{name: "explicit user", defs: `networking.hostName = "pi"; services.bento.host = "pi.home"; services.bento.user = "pi-sftp";`, host: "pi.home", user: "pi-sftp"},
		{name: "user of 32 characters", defs: `services.bento.host = "h"; services.bento.user = "a234567890123456789012345678901b";`,
			failedContains: "of host `h' is not a usable user name (letters, digits, '.', '_', '-', at most 31 characters"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := evalClient(t, fmt.Sprintf(`{ %s services.openssh.enable = true;
			  services.bento = { enable = true; server = "s"; serverHostKey = %s; }; }`, c.defs, nixString(key)))
			if c.failedContains != "" {
				if len(r.Failed) != 1 || !strings.Contains(r.Failed[0], c.failedContains) {
					t.Fatalf("failed assertions %q, want one containing %q", r.Failed, c.failedContains)
				}
				return
			}
			if len(r.Failed) != 0 {
				t.Fatalf("failed assertions: %q", r.Failed)
			}
			conf := agentJSON(t, splitExec(t, r.Services["bento-agent"].ServiceConfig["ExecStart"].(string)))
			if conf["host"] != c.host || conf["user"] != c.user {
				t.Errorf("agent.json host %v user %v, want %s %s", conf["host"], conf["user"], c.host, c.user)
			}
		})
	}
}
