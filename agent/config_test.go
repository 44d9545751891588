package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/agent/health"
)

const hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl server"

// moduleJSON is what the NixOS module writes: every key of the contract.
const moduleJSON = `{
  "host": "alpha",
  "server": "bento.example",
  "port": 2222,
  "user": "bento-alpha",
  "identityFile": "/etc/ssh/ssh_host_ed25519_key",
  "serverHostKey": "[bento.example]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
  "stateDir": "/var/lib/bento",
  "mode": "fetch",
  "operation": "boot",
  "confirmTimeout": "90s",
  "reboot": { "policy": "window", "window": "01:00-05:00" },
  "retry": { "initialDelay": "5m", "maxDelay": "2h" },
  "substituters": [ "https://cache.example", "file:///srv/cache" ],
  "trustedPublicKeys": [ "cache.example-1:AAAA" ],
  "narinfoCacheNegativeTTL": 0,
  "selfUpdate": false,
  "profile": "/nix/var/nix/profiles/system",
  "currentSystem": "/run/current-system",
  "bootedSystem": "/run/booted-system",
  "rebootCommand": [ "systemctl", "kexec" ],
  "secrets": { "wifi": { "path": "/run/secrets/wifi", "owner": "root", "group": "root", "mode": "0400", "restartUnits": [ "wpa_supplicant.service" ] } },
  "healthUnitCommand": [ "systemctl", "is-active" ],
  "healthChecks": {
    "nginx": { "unit": "nginx.service", "timeout": "10s", "retries": 3, "interval": "5s", "settle": "2s", "continuous": true },
    "db": { "command": [ "pg_isready" ], "user": "postgres", "timeout": "5s", "retries": 0, "interval": "0", "settle": "0", "continuous": false },
    "site": { "http": { "url": "http://127.0.0.1/health", "expectStatus": 204 }, "timeout": "3s", "retries": 1, "interval": "1s", "settle": "0", "continuous": false }
  }
}`

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadModuleJSON(t *testing.T) {
	c := Defaults()
	warnings, err := c.LoadFile(writeConfig(t, moduleJSON))
	if err != nil || len(warnings) != 0 {
		t.Fatalf("LoadFile: %v, warnings %v", err, warnings)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("the module's configuration does not validate: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"port", c.Port, 2222},
		{"user", c.User, "bento-alpha"},
		{"mode", c.Mode, "fetch"},
		{"operation", c.Operation, "boot"},
		{"confirmTimeout", time.Duration(c.ConfirmTimeout), 90 * time.Second},
		{"reboot", c.Reboot, Reboot{Policy: "window", Window: "01:00-05:00"}},
		{"retry", c.Retry, Retry{InitialDelay: Duration(5 * time.Minute), MaxDelay: Duration(2 * time.Hour)}},
		{"substituters", c.Substituters, []string{"https://cache.example", "file:///srv/cache"}},
		{"rebootCommand", c.RebootCommand, []string{"systemctl", "kexec"}},
		{"untouched default", c.ConnectAttempts, 4},
		{"health checks", c.healthChecks(false), []health.Check{
			{Name: "db", Command: []string{"pg_isready"}, User: "postgres", Timeout: 5 * time.Second},
			{Name: "nginx", Unit: "nginx.service", Timeout: 10 * time.Second, Retries: 3, Interval: 5 * time.Second, Settle: 2 * time.Second, Continuous: true},
			{Name: "site", HTTP: &health.HTTP{URL: "http://127.0.0.1/health", ExpectStatus: 204}, Timeout: 3 * time.Second, Retries: 1, Interval: time.Second},
		}},
		{"continuous health checks", len(c.healthChecks(true)), 1},
		// nginx: 2s settle, 4 attempts of 10s + 5s grace, 3 pauses of 5s.
		{"health budget", c.healthBudget(), 2*time.Second + 4*15*time.Second + 3*5*time.Second},
	}
	for _, ch := range checks {
		if !reflect.DeepEqual(ch.got, ch.want) {
			t.Errorf("%s = %v, want %v", ch.name, ch.got, ch.want)
		}
	}
}

func TestLoadFileProblems(t *testing.T) {
	cases := []struct {
		name, json, err, warning string
	}{
		{"unknown key is a warning", `{"host":"a","colour":"blue"}`, "", `unknown key "colour" ignored`},
		{"wrong type names the key", `{"port":"twenty-two"}`, `key "port"`, ""},
		{"bad duration", `{"confirmTimeout":"soon"}`, `key "confirmTimeout": "soon" is not a duration: write a systemd time span`, ""},
		{"overflowing seconds", `{"confirmTimeout":1e300}`, `key "confirmTimeout": 1e+300 is too long a duration`, ""},
		{"overflowing span", `{"retry":{"maxDelay":"300 years"}}`, `key "retry": "300 years" is too long a duration`, ""},
		{"exponent is not a span", `{"retry":{"maxDelay":"1e10"}}`, `"1e10" is not a duration`, ""},
		{"too large a file", `{"host":"` + strings.Repeat("a", 1<<20) + `"}`, "larger than 1048576 bytes", ""},
		{"not an object", `[1]`, "not a JSON object", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			warnings, err := c.LoadFile(writeConfig(t, tc.json))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			if tc.warning != "" && (len(warnings) != 1 || !strings.Contains(warnings[0], tc.warning)) {
				t.Errorf("warnings %v, want %q", warnings, tc.warning)
			}
		})
	}
	c := Defaults()
	if _, err := c.LoadFile("/nonexistent/agent.json"); err == nil {
		t.Error("a missing file is not an error")
	}
}

// The module writes systemd time spans; Go's spellings and plain seconds
// keep working.
func TestDurationSpellings(t *testing.T) {
	c := Defaults()
	_, err := c.LoadFile(writeConfig(t, `{"confirmTimeout":"1min 30s","retry":{"initialDelay":"15min","maxDelay":"1h30m"},"connectTimeout":20,"operationTimeout":"2 min"}`))
	if err != nil {
		t.Fatal(err)
	}
	got := []time.Duration{time.Duration(c.ConfirmTimeout), time.Duration(c.Retry.InitialDelay), time.Duration(c.Retry.MaxDelay), time.Duration(c.ConnectTimeout), time.Duration(c.OperationTimeout)}
	want := []time.Duration{90 * time.Second, 15 * time.Minute, 90 * time.Minute, 20 * time.Second, 2 * time.Minute}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("durations %v, want %v", got, want)
	}
	if err := c.Set("retry.initialDelay", "1h 30min"); err != nil || c.Retry.InitialDelay != Duration(90*time.Minute) {
		t.Errorf("Set(retry.initialDelay, \"1h 30min\") = %v, %v", err, time.Duration(c.Retry.InitialDelay))
	}
}

func TestCheckIdentityFile(t *testing.T) {
	dir := t.TempDir()
	private := filepath.Join(dir, "key")
	open := filepath.Join(dir, "open")
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{private, 0o600}, {open, 0o644}} {
		if err := os.WriteFile(f.path, []byte("key"), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(f.path, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name, file, warning, err string
	}{
		{"private", private, "", ""},
		{"readable by others", open, "is readable by group or others (mode 0644): chmod 600 " + open, ""},
		{"missing", filepath.Join(dir, "nosuch"), "", "does not exist: set services.bento.identityFile"},
		{"directory", dir, "", "is not a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			c.IdentityFile = tc.file
			w, err := c.CheckIdentityFile()
			if !strings.Contains(w, tc.warning) || (tc.warning == "") != (w == "") {
				t.Errorf("warning %q, want %q", w, tc.warning)
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			var ce *ConfigError
			if err != nil && !errors.As(err, &ce) {
				t.Errorf("error %v is not a ConfigError (the command would exit 1, not 2)", err)
			}
		})
	}
}

func TestEveryKeyHasAFlagAndVariable(t *testing.T) {
	want := map[string][2]string{
		"identityFile":            {"identity-file", "BENTO_IDENTITY_FILE"},
		"reboot.policy":           {"reboot-policy", "BENTO_REBOOT_POLICY"},
		"retry.initialDelay":      {"retry-initial-delay", "BENTO_RETRY_INITIAL_DELAY"},
		"narinfoCacheNegativeTTL": {"narinfo-cache-negative-ttl", "BENTO_NARINFO_CACHE_NEGATIVE_TTL"},
		"serverHostKey":           {"server-host-key", "BENTO_SERVER_HOST_KEY"},
	}
	seen := map[string]bool{}
	for _, k := range Keys() {
		seen[strings.SplitN(k.Name, ".", 2)[0]] = true
		if w, ok := want[k.Name]; ok && (k.Flag != w[0] || k.Env != w[1]) {
			t.Errorf("%s: flag %s env %s, want %s %s", k.Name, k.Flag, k.Env, w[0], w[1])
		}
	}
	// Every key of the module's contract but secrets (a JSON map: no flag).
	for _, key := range []string{"host", "server", "port", "user", "identityFile", "serverHostKey", "stateDir", "mode", "operation",
		"confirmTimeout", "reboot", "retry", "substituters", "trustedPublicKeys", "narinfoCacheNegativeTTL", "selfUpdate",
		"profile", "currentSystem", "bootedSystem", "rebootCommand"} {
		if !seen[key] {
			t.Errorf("contract key %s has no flag", key)
		}
	}
}

func TestSetOverridesFromStrings(t *testing.T) {
	c := Defaults()
	sets := [][2]string{
		{"port", "2200"}, {"confirmTimeout", "2s"}, {"retry.maxDelay", "30"}, {"substituters", "file:///a, file:///b"},
		{"rebootCommand", "/bin/echo reboot"}, {"selfUpdate", "true"}, {"reboot.window", "23:00-02:00"},
	}
	for _, s := range sets {
		if err := c.Set(s[0], s[1]); err != nil {
			t.Fatalf("Set(%s, %s): %v", s[0], s[1], err)
		}
	}
	if c.Port != 2200 || c.ConfirmTimeout != Duration(2*time.Second) || c.Retry.MaxDelay != Duration(30*time.Second) ||
		!reflect.DeepEqual(c.Substituters, []string{"file:///a", "file:///b"}) || !reflect.DeepEqual(c.RebootCommand, []string{"/bin/echo", "reboot"}) ||
		!c.SelfUpdate || c.Reboot.Window != "23:00-02:00" {
		t.Errorf("after Set: %+v", c)
	}
	for _, bad := range [][2]string{{"port", "x"}, {"selfUpdate", "maybe"}, {"confirmTimeout", "later"}, {"nosuch", "1"}} {
		if err := c.Set(bad[0], bad[1]); err == nil {
			t.Errorf("Set(%s, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestValidate(t *testing.T) {
	good := func() Config {
		c := Defaults()
		c.Host, c.Server, c.ServerHostKey = "alpha", "bento.example", hostKey
		c.Complete()
		return c
	}
	if err := func() error { c := good(); return c.Validate() }(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	cases := []struct {
		name   string
		change func(*Config)
		err    string
	}{
		{"no server", func(c *Config) { c.Server = "" }, "server is not set"},
		{"no host key", func(c *Config) { c.ServerHostKey = "" }, "never trusts a server key on first use"},
		{"garbage host key", func(c *Config) { c.ServerHostKey = "hello" }, "neither a public key"},
		{"host key as a file path", func(c *Config) { c.ServerHostKey = "/etc/ssh/ssh_host_ed25519_key.pub" }, "is a file path, not a key: give the key itself, the line in the server's ssh_host_ed25519_key.pub"},
		{"bad host name", func(c *Config) { c.Host = "../etc" }, "invalid host name"},
		{"bad mode", func(c *Config) { c.Mode = "push" }, `mode "push" is not supported`},
		{"bad operation", func(c *Config) { c.Operation = "dry-activate" }, "use switch, boot or test"},
		{"bad window", func(c *Config) { c.Reboot = Reboot{Policy: "window", Window: "25:00-03:00"} }, "25:00"},
		{"window without window", func(c *Config) { c.Reboot = Reboot{Policy: "window"} }, "needs a window"},
		{"self-update in fetch mode", func(c *Config) { c.Mode, c.SelfUpdate = "fetch", true }, "selfUpdate needs mode build"},
		{"relative state dir", func(c *Config) { c.StateDir = "state" }, "absolute path"},
		{"retry upside down", func(c *Config) { c.Retry = Retry{InitialDelay: Duration(time.Hour), MaxDelay: Duration(time.Minute)} }, "initialDelay (1h) must not be above maxDelay (1min)"},
		{"confirmTimeout too long", func(c *Config) { c.ConfirmTimeout = Duration(48 * time.Hour) }, "confirmTimeout 2d is out of range: it must be from 1s to 1d"},
		{"confirmTimeout zero", func(c *Config) { c.ConfirmTimeout = 0 }, "confirmTimeout 0 is out of range: it must be from 1s to 1d"},
		{"retry negative", func(c *Config) { c.Retry.InitialDelay = Duration(-time.Second) }, "retry.initialDelay -1s is out of range: it must be from 0 to 30d"},
		{"maxDelay too long", func(c *Config) { c.Retry.MaxDelay = Duration(31 * 24 * time.Hour) }, "retry.maxDelay 31d is out of range: it must be from 0 to 30d"},
		{"connectTimeout", func(c *Config) { c.ConnectTimeout = Duration(2 * time.Hour) }, "connectTimeout 2h is out of range: it must be from 1s to 1h"},
		{"operationTimeout", func(c *Config) { c.OperationTimeout = 0 }, "operationTimeout 0 is out of range: it must be from 1s to 1d"},
		{"connectAttempts unbounded", func(c *Config) { c.ConnectAttempts = 1e9 }, "connectAttempts 1000000000 is out of range: it must be from 1 to 100"},
		{"connectAttempts zero", func(c *Config) { c.ConnectAttempts = 0 }, "connectAttempts 0 is out of range: it must be from 1 to 100"},
		{"negative TTL", func(c *Config) { c.NarinfoCacheNegativeTTL = -1 }, "narinfoCacheNegativeTTL -1 is out of range: it must be from 0 to 31536000"},
		{"log too small", func(c *Config) { c.LogMaxBytes = 100 }, "logMaxBytes 100 is out of range: it must be from 4096 to 67108864"},
		{"logs kept", func(c *Config) { c.LogsKept = 0 }, "logsKept 0 is out of range: it must be from 1 to 1000"},
		{"empty reboot command", func(c *Config) { c.RebootCommand = nil }, "rebootCommand is empty"},
		{"port", func(c *Config) { c.Port = 70000 }, "not a TCP port"},
		{"health check of two kinds", func(c *Config) {
			c.HealthChecks = map[string]HealthCheckSpec{"web": {Unit: "nginx.service", Command: []string{"true"}}}
		}, "healthChecks.web: set exactly one of unit, command and http (2 set)"},
		{"health check timeout", func(c *Config) {
			c.HealthChecks = map[string]HealthCheckSpec{"web": {Unit: "nginx.service", Timeout: Duration(time.Hour)}}
		}, "healthChecks.web: timeout 1h is out of range"},
		{"health check name", func(c *Config) {
			c.HealthChecks = map[string]HealthCheckSpec{"a b": {Unit: "nginx.service"}}
		}, `healthChecks: "a b" is not a check name`},
		{"health http without url", func(c *Config) {
			c.HealthChecks = map[string]HealthCheckSpec{"web": {HTTP: &HealthHTTPSpec{}}}
		}, `healthChecks.web: http.url "" is not an http:// or https:// URL`},
		{"health unit command", func(c *Config) {
			c.HealthChecks, c.HealthUnitCommand = map[string]HealthCheckSpec{"web": {Unit: "nginx.service"}}, nil
		}, "healthUnitCommand is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// Every problem is reported at once, in the order of the options, so one
// run of the agent names all the fixes.
func TestValidateReportsEveryProblem(t *testing.T) {
	c := Defaults()
	c.Host, c.ServerHostKey = "alpha", hostKey
	c.Complete()
	c.Server, c.LogsKept, c.User, c.Mode, c.RestartCommand = "", 0, "", "push", nil
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate() = nil")
	}
	msg, at := err.Error(), 0
	for _, want := range []string{"server is not set", "logsKept 0 is out of range", "user is empty", `mode "push" is not supported`, "restartCommand is empty"} {
		i := strings.Index(msg[at:], want)
		if i < 0 {
			t.Fatalf("Validate() = %q: %q missing or out of order", msg, want)
		}
		at += i + len(want)
	}
}

func TestCompleteDefaultsUserToHost(t *testing.T) {
	c := Defaults()
	c.Host = "alpha"
	if err := c.Complete(); err != nil || c.User != "alpha" {
		t.Errorf("Complete: user %q, %v", c.User, err)
	}
	c = Defaults()
	if err := c.Complete(); err != nil || c.Host == "" || strings.Contains(c.Host, ".") {
		t.Errorf("Complete without host: %q, %v (want the machine's short name)", c.Host, err)
	}
}
