package agent

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/agent/health"
	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/secrets"
)

// Config is the agent's configuration. The NixOS module writes it as JSON
// (the keys below are a contract with it) and runs
// "bento agent run --config FILE"; every key is also a flag and a BENTO_*
// environment variable (see Keys), which override the file.
type Config struct {
	Host          string `json:"host"`
	Server        string `json:"server"`
	Port          int    `json:"port"`
	User          string `json:"user"`
	IdentityFile  string `json:"identityFile"`
	ServerHostKey string `json:"serverHostKey"`
	// Servers lists the primary and its mirrors (services.bento.servers);
	// when set, server, port and serverHostKey stay unset. See ServerList.
	Servers []ServerEntry `json:"servers,omitempty"`
	// ServerOrder is how Servers are tried: "sticky" (the last one that
	// worked first, then the others in order) or "ordered" (always in order).
	ServerOrder string `json:"serverOrder"`
	StateDir    string `json:"stateDir"`
	// Mode is build (evaluate and build the published flake) or fetch
	// (realise the server's expected toplevel from substituters).
	Mode string `json:"mode"`
	// Operation is switch, boot or test.
	Operation      string   `json:"operation"`
	ConfirmTimeout Duration `json:"confirmTimeout"`
	Reboot         Reboot   `json:"reboot"`
	Retry          Retry    `json:"retry"`
	// Substituters and TrustedPublicKeys are added to Nix's own for the
	// build (build mode) or the realisation (fetch mode).
	Substituters            []string `json:"substituters"`
	TrustedPublicKeys       []string `json:"trustedPublicKeys"`
	NarinfoCacheNegativeTTL int      `json:"narinfoCacheNegativeTTL"`
	SelfUpdate              bool     `json:"selfUpdate"`
	Profile                 string   `json:"profile"`
	CurrentSystem           string   `json:"currentSystem"`
	BootedSystem            string   `json:"bootedSystem"`
	RebootCommand           []string `json:"rebootCommand"`
	// Secrets are the host's secrets options by name (see package secrets).
	Secrets map[string]secrets.Spec `json:"secrets,omitempty"`
	// RestartCommand restarts a unit whose secret changed, the unit's
	// name appended.
	RestartCommand []string `json:"restartCommand"`
	// HealthChecks are the host's health checks by name: run after a
	// switch before it is confirmed (a failure rolls back), and, the
	// continuous ones, on every quiet tick (see package agent/health).
	HealthChecks map[string]HealthCheckSpec `json:"healthChecks,omitempty"`
	// HealthUnitCommand tells whether a unit is active (exit 0), the
	// unit's name appended.
	HealthUnitCommand []string `json:"healthUnitCommand"`
	// Trigger is read by "bento agent trigger-server" only.
	Trigger Trigger `json:"trigger"`

	// Beyond the module's contract: tuning with sensible defaults.
	ConnectTimeout   Duration `json:"connectTimeout"`
	OperationTimeout Duration `json:"operationTimeout"`
	ConnectAttempts  int      `json:"connectAttempts"`
	// PostQuantum offers the hybrid ML-KEM key exchange (about 2.2 kB more
	// per connection) where the server supports it.
	PostQuantum bool  `json:"postQuantum"`
	LogMaxBytes int64 `json:"logMaxBytes"`
	LogsKept    int   `json:"logsKept"`

	// Signed publications (docs/mirrors.md): PublicationKey pins the
	// fleet's publication key(s), name:base64, space-separated; when set,
	// a manifest that is not signed by one of them is refused, whatever
	// server delivered it. MaxPublicationAge (0: off) reports an older
	// publication as stale instead of applying it.
	PublicationKey    string   `json:"publicationKey"`
	MaxPublicationAge Duration `json:"maxPublicationAge"`
}

// HealthCheckSpec is one health check as the module writes it: exactly
// one of unit, command and http.
type HealthCheckSpec struct {
	Unit       string          `json:"unit,omitempty"`
	Command    []string        `json:"command,omitempty"`
	User       string          `json:"user,omitempty"`
	HTTP       *HealthHTTPSpec `json:"http,omitempty"`
	Timeout    Duration        `json:"timeout"`
	Retries    int             `json:"retries"`
	Interval   Duration        `json:"interval"`
	Settle     Duration        `json:"settle"`
	Continuous bool            `json:"continuous"`
}

// HealthHTTPSpec is an HTTP check: GET url, expect expectStatus (200 when 0).
type HealthHTTPSpec struct {
	URL          string `json:"url"`
	ExpectStatus int    `json:"expectStatus"`
}

// Defaults of a health check's settings left out of the JSON.
const (
	defaultHealthTimeout = 30 * time.Second
	defaultExpectStatus  = http.StatusOK
)

// healthChecks are the configured checks, defaults filled in, sorted by
// name; continuousOnly keeps the continuous ones.
func (c *Config) healthChecks(continuousOnly bool) []health.Check {
	var out []health.Check
	for name, s := range c.HealthChecks {
		if continuousOnly && !s.Continuous {
			continue
		}
		hc := health.Check{
			Name: name, Unit: s.Unit, Command: s.Command, User: s.User,
			Timeout: time.Duration(s.Timeout), Retries: s.Retries, Interval: time.Duration(s.Interval),
			Settle: time.Duration(s.Settle), Continuous: s.Continuous,
		}
		if hc.Timeout == 0 {
			hc.Timeout = defaultHealthTimeout
		}
		if s.HTTP != nil {
			hc.HTTP = &health.HTTP{URL: s.HTTP.URL, ExpectStatus: cmp.Or(s.HTTP.ExpectStatus, defaultExpectStatus)}
		}
		out = append(out, hc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// healthBudget is the longest the checks after a switch can take (they
// run side by side).
func (c *Config) healthBudget() time.Duration {
	var longest time.Duration
	for _, hc := range c.healthChecks(false) {
		longest = max(longest, hc.Budget(health.DefaultGrace))
	}
	return longest
}

// validHealthName: a check's name goes into reports and status lines.
func validHealthName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i, r := range name {
		if !healthNameChar(r, i == 0) {
			return false
		}
	}
	return true
}

// healthNameChar: letters, digits and _ anywhere; - and . but first.
func healthNameChar(r rune, first bool) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
		return true
	case r == '-' || r == '.':
		return !first
	}
	return false
}

// ServerEntry is one server of services.bento.servers: a bento server
// (the primary, or a mirror that bento mirror push fills).
type ServerEntry struct {
	Address string `json:"address"`
	// Port is the SSH port; 22 when 0.
	Port int `json:"port,omitempty"`
	// HostKey is the server's SSH host key, as serverHostKey.
	HostKey string `json:"hostKey"`
	// User, when set, is this host's SFTP user on that server (the
	// host's user otherwise).
	User string `json:"user,omitempty"`
}

// Orders of Config.ServerOrder.
const (
	ServerOrderSticky  = "sticky"
	ServerOrderOrdered = "ordered"
)

// maxServers bounds services.bento.servers: each one that is down costs a
// connect attempt per round.
const maxServers = 16

// ServerList is the servers the agent may use, in configuration order:
// services.bento.servers, or the one server of server/port/serverHostKey.
func (c *Config) ServerList() []ServerEntry {
	if len(c.Servers) > 0 {
		out := make([]ServerEntry, len(c.Servers))
		for i, s := range c.Servers {
			if s.Port == 0 {
				s.Port = 22
			}
			if s.User == "" {
				s.User = c.User
			}
			out[i] = s
		}
		return out
	}
	return []ServerEntry{{Address: c.Server, Port: c.Port, HostKey: c.ServerHostKey, User: c.User}}
}

// Addr is the entry's "host:port".
func (s ServerEntry) Addr() string { return net.JoinHostPort(s.Address, strconv.Itoa(s.Port)) }

// Reboot is the reboot policy.
type Reboot struct {
	Policy string `json:"policy"`
	Window string `json:"window"`
}

// Trigger says who may use the local trigger.
type Trigger struct {
	// AllowedGroups: besides root, members of these groups may ask the
	// trigger server for a tick (and read its output).
	AllowedGroups []string `json:"allowedGroups"`
}

// Retry is the backoff for a version whose attempt failed.
type Retry struct {
	InitialDelay Duration `json:"initialDelay"`
	MaxDelay     Duration `json:"maxDelay"`
}

// Duration is a time.Duration written in JSON as a systemd time span
// ("90s", "15min", "1h 30min"), a Go duration ("1h30m") or a number of
// seconds.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(timespan.Format(time.Duration(d)))
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var n float64
	if err := json.Unmarshal(b, &n); err == nil {
		v, err := timespan.FromSeconds(n)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want %s, got %s", timespan.Syntax, b)
	}
	v, err := timespan.Parse(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Defaults returns the configuration used where nothing is set.
func Defaults() Config {
	p := activate.DefaultPaths()
	return Config{
		Port:              22,
		ServerOrder:       ServerOrderSticky,
		IdentityFile:      "/etc/ssh/ssh_host_ed25519_key",
		StateDir:          "/var/lib/bento",
		Mode:              manifest.ModeBuild,
		Operation:         activate.OpSwitch,
		ConfirmTimeout:    Duration(60 * time.Second),
		Reboot:            Reboot{Policy: activate.PolicyNever},
		Retry:             Retry{InitialDelay: Duration(10 * time.Minute), MaxDelay: Duration(6 * time.Hour)},
		Profile:           p.Profile,
		CurrentSystem:     p.CurrentSystem,
		BootedSystem:      p.BootedSystem,
		RebootCommand:     p.RebootCommand,
		RestartCommand:    append([]string(nil), secrets.DefaultRestartCommand...),
		HealthUnitCommand: health.DefaultUnitCommand(),
		Trigger:           Trigger{AllowedGroups: []string{"wheel"}},
		ConnectTimeout:    Duration(20 * time.Second),
		OperationTimeout:  Duration(60 * time.Second),
		ConnectAttempts:   4,
		LogMaxBytes:       1 << 20,
		LogsKept:          20,
	}
}

// LoadFile reads a JSON configuration over c. Unknown keys are returned
// as warnings, not errors, so a newer module does not break an older agent.
func (c *Config) LoadFile(file string) (warnings []string, err error) {
	data, err := readConfigFile(file)
	if err != nil {
		return nil, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("config %s: not a JSON object: %w", file, err)
	}
	known := map[string]bool{}
	for _, k := range jsonKeys() {
		known[k] = true
	}
	var unknown, keys []string
	for k := range raw {
		if known[k] {
			keys = append(keys, k)
		} else {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		warnings = append(warnings, fmt.Sprintf("config %s: unknown key %q ignored", file, k))
	}
	sort.Strings(keys)
	return warnings, c.decodeKeys(file, raw, keys)
}

// decodeKeys decodes the values of keys in raw over c, in that order.
func (c *Config) decodeKeys(file string, raw map[string]json.RawMessage, keys []string) error {
	// Key by key, so that an error names the key even when it comes from
	// a value's own parser (a duration) rather than from encoding/json.
	for _, k := range keys {
		one, _ := json.Marshal(map[string]json.RawMessage{k: raw[k]})
		if err := json.NewDecoder(bytes.NewReader(one)).Decode(c); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return fmt.Errorf("config %s: key %q: %s is not a %s", file, te.Field, te.Value, te.Type)
			}
			return fmt.Errorf("config %s: key %q: %w", file, k, err)
		}
	}
	return nil
}

// maxConfigBytes bounds the configuration file: the module's is a few KiB.
const maxConfigBytes = 1 << 20

func readConfigFile(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", file, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config %s: larger than %d bytes: not an agent configuration", file, maxConfigBytes)
	}
	return data, nil
}

// jsonKeys are the top-level keys of the JSON form.
func jsonKeys() []string {
	seen := map[string]bool{"secrets": true, "healthChecks": true, "servers": true}
	for _, k := range Keys() {
		seen[strings.SplitN(k.Name, ".", 2)[0]] = true
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Key is one configuration setting in its three spellings.
type Key struct {
	// Name is the JSON key ("reboot.policy" for nested ones).
	Name string
	// Flag is the command-line flag without dashes.
	Flag string
	// Env is the environment variable.
	Env   string
	Usage string
	// List is true when the value is a list: space- or comma-separated
	// on the command line and in the environment.
	List bool
	// Bool is true for a true/false setting (a flag without value).
	Bool bool
	set  func(c *Config, v string) error
}

// Keys lists every setting that a flag or an environment variable can set.
func Keys() []Key {
	str := func(p func(*Config) *string) func(*Config, string) error {
		return func(c *Config, v string) error { *p(c) = v; return nil }
	}
	num := func(p func(*Config) *int) func(*Config, string) error {
		return func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%q is not a whole number", v)
			}
			*p(c) = n
			return nil
		}
	}
	dur := func(p func(*Config) *Duration) func(*Config, string) error {
		return func(c *Config, v string) error {
			d, err := timespan.Parse(v)
			*p(c) = Duration(d)
			return err
		}
	}
	list := func(p func(*Config) *[]string) func(*Config, string) error {
		return func(c *Config, v string) error { *p(c) = splitList(v); return nil }
	}
	k := func(name, usage string, set func(*Config, string) error) Key {
		flag := kebab(name)
		return Key{Name: name, Flag: flag, Env: "BENTO_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_")), Usage: usage, set: set}
	}
	l := func(key Key) Key { key.List = true; return key }
	b := func(key Key) Key { key.Bool = true; return key }
	return []Key{
		k("host", "this host's name in the fleet (default: the machine's host name)", str(func(c *Config) *string { return &c.Host })),
		k("server", "the bento server's address", str(func(c *Config) *string { return &c.Server })),
		k("port", "the server's SSH port (default 22)", num(func(c *Config) *int { return &c.Port })),
		k("serverOrder", "with several servers (the JSON key servers): sticky (the last one that worked first) or ordered (always the first one first)", str(func(c *Config) *string { return &c.ServerOrder })),
		k("user", "the SFTP user of this host on the server (default: the host name)", str(func(c *Config) *string { return &c.User })),
		k("identityFile", "private key this host logs in with (default /etc/ssh/ssh_host_ed25519_key)", str(func(c *Config) *string { return &c.IdentityFile })),
		k("serverHostKey", "the server's SSH host key: \"ssh-ed25519 AAAA…\" or a known_hosts line (required: never trusted on first use)", str(func(c *Config) *string { return &c.ServerHostKey })),
		k("stateDir", "where the agent keeps its trees, state, queue and lock (default /var/lib/bento)", str(func(c *Config) *string { return &c.StateDir })),
		k("mode", "build (evaluate and build the flake here) or fetch (realise the server's build from substituters, evaluate nothing)", str(func(c *Config) *string { return &c.Mode })),
		k("operation", "switch, boot or test", str(func(c *Config) *string { return &c.Operation })),
		k("confirmTimeout", "after a switch, how long the server may stay unreachable before rolling back", dur(func(c *Config) *Duration { return &c.ConfirmTimeout })),
		k("reboot.policy", "when a new kernel, initrd or modules need a reboot: never, now or window", str(func(c *Config) *string { return &c.Reboot.Policy })),
		k("reboot.window", "daily reboot window for policy window, e.g. 01:00-05:00", str(func(c *Config) *string { return &c.Reboot.Window })),
		k("retry.initialDelay", "wait before retrying a version that failed (doubles each time)", dur(func(c *Config) *Duration { return &c.Retry.InitialDelay })),
		k("retry.maxDelay", "longest wait between retries of a failed version", dur(func(c *Config) *Duration { return &c.Retry.MaxDelay })),
		l(k("substituters", "binary caches to add (URLs, space-separated)", list(func(c *Config) *[]string { return &c.Substituters }))),
		l(k("trustedPublicKeys", "keys the substituters sign with (name:base64, space-separated)", list(func(c *Config) *[]string { return &c.TrustedPublicKeys }))),
		k("narinfoCacheNegativeTTL", "seconds Nix remembers that a cache lacks a path (default 0: a just-published path is seen at once)", num(func(c *Config) *int { return &c.NarinfoCacheNegativeTTL })),
		b(k("selfUpdate", "between publications, update the flake inputs (nix flake update), build and switch", func(c *Config, v string) error {
			on, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q is not true or false", v)
			}
			c.SelfUpdate = on
			return nil
		})),
		b(k("postQuantum", "offer the post-quantum hybrid key exchange mlkem768x25519 (OpenSSH 9.9+; about 2.2 kB more per connection)", func(c *Config, v string) error {
			on, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%q is not true or false", v)
			}
			c.PostQuantum = on
			return nil
		})),
		k("profile", "the system profile (default /nix/var/nix/profiles/system)", str(func(c *Config) *string { return &c.Profile })),
		k("currentSystem", "link to the running system (default /run/current-system)", str(func(c *Config) *string { return &c.CurrentSystem })),
		k("bootedSystem", "link to the booted system (default /run/booted-system)", str(func(c *Config) *string { return &c.BootedSystem })),
		l(k("rebootCommand", "command that reboots, words separated by spaces (default \"systemctl reboot\")", func(c *Config, v string) error { c.RebootCommand = strings.Fields(v); return nil })),
		l(k("restartCommand", "command that restarts a unit whose secret changed, the unit's name appended (default \"systemctl try-restart\")", func(c *Config, v string) error { c.RestartCommand = strings.Fields(v); return nil })),
		l(k("healthUnitCommand", "command that tells whether a unit of a health check is active (exit 0), the unit's name appended (default \"systemctl is-active\")", func(c *Config, v string) error { c.HealthUnitCommand = strings.Fields(v); return nil })),
		l(k("trigger.allowedGroups", "groups whose members, besides root, may use the local trigger (default wheel; space-separated)", list(func(c *Config) *[]string { return &c.Trigger.AllowedGroups }))),
		k("connectTimeout", "limit for connecting and the SSH handshake, per attempt", dur(func(c *Config) *Duration { return &c.ConnectTimeout })),
		k("operationTimeout", "how long one SFTP operation may make no progress", dur(func(c *Config) *Duration { return &c.OperationTimeout })),
		k("connectAttempts", "connection attempts per tick (backoff with jitter between them)", num(func(c *Config) *int { return &c.ConnectAttempts })),
		k("logMaxBytes", "largest uploaded log; the middle of a longer one is cut", func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("%q is not a whole number", v)
			}
			c.LogMaxBytes = n
			return nil
		}),
		k("logsKept", "how many logs to keep under reports/logs on the server", num(func(c *Config) *int { return &c.LogsKept })),
		// Signed publications.
		k("publicationKey", "the fleet's publication key(s), name:base64 (bento keygen --publication), space-separated: refuse any manifest not signed by one", str(func(c *Config) *string { return &c.PublicationKey })),
		k("maxPublicationAge", "report a publication older than this as stale instead of applying it (0: off)", dur(func(c *Config) *Duration { return &c.MaxPublicationAge })),
	}
}

// Set sets the key named name (a JSON key such as "reboot.policy") from
// its command-line or environment spelling.
func (c *Config) Set(name, value string) error {
	for _, k := range Keys() {
		if k.Name == name {
			if err := k.set(c, value); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		}
	}
	return fmt.Errorf("unknown setting %q", name)
}

func splitList(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
}

// kebab turns "retry.initialDelay" into "retry-initial-delay".
func kebab(name string) string {
	var b strings.Builder
	for i, r := range name {
		switch {
		case r == '.':
			b.WriteByte('-')
		case r >= 'A' && r <= 'Z':
			if i > 0 && name[i-1] >= 'a' && name[i-1] <= 'z' {
				b.WriteByte('-')
			}
			b.WriteRune(r - 'A' + 'a')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Complete fills what can be derived: the host name from the machine, the
// user from the host name.
func (c *Config) Complete() error {
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host is not set and the machine's host name is unknown (%w): set host (--host)", err)
		}
		c.Host, _, _ = strings.Cut(h, ".")
	}
	if c.User == "" {
		c.User = c.Host
	}
	return nil
}

// The ranges of the numbers in the configuration: wide enough for any real
// fleet, narrow enough that no conversion overflows and no loop runs for
// ever. docs/agent.md lists them.
const (
	maxConnectAttempts = 100
	maxNegativeTTL     = 365 * 24 * 3600
	minLogBytes        = 4096
	maxLogBytes        = 64 << 20
	maxLogsKept        = 1000
	maxHealthChecks    = 64
)

type durationBound struct {
	name     string
	d        *Duration
	min, max time.Duration
}

func durationBounds(c *Config) []durationBound {
	const day = 24 * time.Hour
	return []durationBound{
		{"confirmTimeout", &c.ConfirmTimeout, time.Second, day},
		{"retry.initialDelay", &c.Retry.InitialDelay, 0, 30 * day},
		{"retry.maxDelay", &c.Retry.MaxDelay, 0, 30 * day},
		{"connectTimeout", &c.ConnectTimeout, time.Second, time.Hour},
		{"operationTimeout", &c.OperationTimeout, time.Second, day},
		{"maxPublicationAge", &c.MaxPublicationAge, 0, 3650 * day},
	}
}

// Validate checks the configuration and says how to fix what is wrong.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, check := range []func(*Config, func(string, ...any)){
		(*Config).validateServer, (*Config).validateBounds, (*Config).validateLogin,
		(*Config).validateApply, (*Config).validateSystem,
	} {
		check(c, bad)
	}
	return errors.Join(errs...)
}

// validateServer checks which host this is and which server it polls.
func (c *Config) validateServer(bad func(format string, args ...any)) {
	if err := fleet.ValidateName(c.Host); err != nil {
		bad("host: %w", err)
	}
	switch c.ServerOrder {
	case ServerOrderSticky, ServerOrderOrdered:
	default:
		bad("serverOrder %q is not sticky or ordered", c.ServerOrder)
	}
	if len(c.Servers) > 0 {
		c.validateServers(bad)
		return
	}
	if c.Server == "" {
		bad("server is not set: set services.bento.server (--server, BENTO_SERVER) to the bento server's address")
	}
	if c.Port < 1 || c.Port > 65535 {
		bad("port %d is not a TCP port (1-65535)", c.Port)
	}
}

// validateServers checks services.bento.servers.
func (c *Config) validateServers(bad func(format string, args ...any)) {
	if c.Server != "" || c.ServerHostKey != "" {
		bad("both servers and server/serverHostKey are set: list every server, the primary first, in servers (services.bento.servers) and leave server and serverHostKey unset")
	}
	if len(c.Servers) > maxServers {
		bad("servers lists %d servers, more than %d", len(c.Servers), maxServers)
		return
	}
	seen := map[string]bool{}
	for i, s := range c.ServerList() {
		validateServerEntry(bad, i, s, seen)
	}
}

// validateServerEntry checks servers[i]; seen are the addresses listed
// before it.
func validateServerEntry(bad func(format string, args ...any), i int, s ServerEntry, seen map[string]bool) {
	what := fmt.Sprintf("servers[%d]", i)
	if s.Address == "" || strings.ContainsAny(s.Address, " \t\n/@") {
		bad("%s: address %q is not a host name or IP address", what, s.Address)
		return
	}
	what += " (" + s.Address + ")"
	if s.Port < 1 || s.Port > 65535 {
		bad("%s: port %d is not a TCP port (1-65535)", what, s.Port)
	}
	if seen[s.Addr()] {
		bad("%s: %s is listed twice", what, s.Addr())
	}
	seen[s.Addr()] = true
	if _, err := transport.ParseHostKeys(s.HostKey); err != nil {
		bad("%s: hostKey: %w", what, err)
	}
}

// Endpoints are ServerList ready to dial.
func (c *Config) Endpoints() ([]transport.Endpoint, error) {
	var out []transport.Endpoint
	for _, s := range c.ServerList() {
		keys, err := transport.ParseHostKeys(s.HostKey)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", s.Addr(), err)
		}
		out = append(out, transport.Endpoint{Addr: s.Addr(), User: s.User, HostKeys: keys})
	}
	return out, nil
}

// validateBounds checks the durations and counts that have a range.
func (c *Config) validateBounds(bad func(format string, args ...any)) {
	for _, b := range durationBounds(c) {
		if *b.d < Duration(b.min) || *b.d > Duration(b.max) {
			bad("%s %s is out of range: it must be from %s to %s", b.name, timespan.Format(time.Duration(*b.d)), timespan.Format(b.min), timespan.Format(b.max))
		}
	}
	for _, b := range []struct {
		name     string
		v        int64
		min, max int64
	}{
		{"connectAttempts", int64(c.ConnectAttempts), 1, maxConnectAttempts},
		{"narinfoCacheNegativeTTL", int64(c.NarinfoCacheNegativeTTL), 0, maxNegativeTTL},
		{"logMaxBytes", c.LogMaxBytes, minLogBytes, maxLogBytes},
		{"logsKept", int64(c.LogsKept), 1, maxLogsKept},
	} {
		if b.v < b.min || b.v > b.max {
			bad("%s %d is out of range: it must be from %d to %d", b.name, b.v, b.min, b.max)
		}
	}
}

// validateLogin checks how the agent logs in to the server.
func (c *Config) validateLogin(bad func(format string, args ...any)) {
	if c.User == "" {
		bad("user is empty: set it to this host's SFTP user on the server")
	}
	if c.IdentityFile == "" {
		bad("identityFile is empty: set it to the private key this host logs in with")
	}
	if _, err := c.PublicationKeys(); err != nil {
		bad("%w", err)
	}
	if len(c.Servers) > 0 {
		return // validateServers checks each one's key
	}
	if _, err := transport.ParseHostKeys(c.ServerHostKey); err != nil {
		if k := strings.TrimSpace(c.ServerHostKey); strings.HasPrefix(k, "/") || strings.HasPrefix(k, "./") {
			// Not read for the user: the file would have to be the
			// server's, and a key is pinned on purpose, not looked up.
			bad("serverHostKey %q is a file path, not a key: give the key itself, the line in the server's %s (for example --server-host-key \"$(cat %s)\")", k, filepath.Base(k), k)
		} else {
			bad("%w", err)
		}
	}
}

// validateApply checks where state is kept and how a version is applied.
func (c *Config) validateApply(bad func(format string, args ...any)) {
	if c.StateDir == "" || !strings.HasPrefix(c.StateDir, "/") {
		bad("stateDir %q must be an absolute path", c.StateDir)
	}
	switch c.Mode {
	case manifest.ModeBuild, manifest.ModeFetch:
	default:
		bad("mode %q is not supported: use build or fetch", c.Mode)
	}
	if err := activate.CheckOp(c.Operation); err != nil {
		bad("%w", err)
	}
	if _, err := activate.ParsePolicy(c.Reboot.Policy, c.Reboot.Window); err != nil {
		bad("%w", err)
	}
	if c.Retry.MaxDelay > 0 && c.Retry.InitialDelay > c.Retry.MaxDelay {
		bad("retry: initialDelay (%s) must not be above maxDelay (%s)", timespan.Format(time.Duration(c.Retry.InitialDelay)), timespan.Format(time.Duration(c.Retry.MaxDelay)))
	}
	if c.Mode == manifest.ModeFetch && c.SelfUpdate {
		bad("selfUpdate needs mode build: a host in fetch mode evaluates nothing")
	}
}

// validateSystem checks the paths and commands of the system and the
// secrets' names.
func (c *Config) validateSystem(bad func(format string, args ...any)) {
	for name, p := range map[string]string{"profile": c.Profile, "currentSystem": c.CurrentSystem, "bootedSystem": c.BootedSystem} {
		if !strings.HasPrefix(p, "/") {
			bad("%s %q must be an absolute path", name, p)
		}
	}
	if len(c.RebootCommand) == 0 || c.RebootCommand[0] == "" {
		bad("rebootCommand is empty: use e.g. [\"systemctl\", \"reboot\"]")
	}
	if len(c.RestartCommand) == 0 || c.RestartCommand[0] == "" {
		bad("restartCommand is empty: use e.g. [\"systemctl\", \"try-restart\"]")
	}
	for name := range c.Secrets {
		if err := secrets.ValidateName(name); err != nil {
			bad("secrets: %w", err)
		}
	}
	c.validateHealth(bad)
}

// validateHealth checks the health checks: each one's kind and bounds,
// and that all of them fit in what the agent allows a switch.
func (c *Config) validateHealth(bad func(format string, args ...any)) {
	if len(c.HealthChecks) > maxHealthChecks {
		bad("healthChecks: %d checks, at most %d", len(c.HealthChecks), maxHealthChecks)
	}
	for _, hc := range c.healthChecks(false) {
		if !validHealthName(hc.Name) {
			bad("healthChecks: %q is not a check name (letters, digits, '_', then '-' and '.' too, at most 64)", hc.Name)
			continue
		}
		if err := hc.Validate(); err != nil {
			bad("%w", err)
		}
	}
	if len(c.HealthChecks) > 0 && (len(c.HealthUnitCommand) == 0 || c.HealthUnitCommand[0] == "") {
		bad("healthUnitCommand is empty: use e.g. [\"systemctl\", \"is-active\"]")
	}
}

// ConfigError is a configuration the agent cannot run with: the command
// exits 2 (a usage error), not 1 (a failed tick), since no retry helps.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// CheckIdentityFile checks that the identity file is a readable regular
// file. A key that group or others can read is a warning, not an error:
// the host key's own permissions are the host's business, but a key left
// open is worth saying once per tick.
func (c *Config) CheckIdentityFile() (warning string, err error) {
	fi, err := os.Stat(c.IdentityFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", &ConfigError{fmt.Errorf("identityFile %s does not exist: set services.bento.identityFile (--identity-file) to this host's private key (the default, /etc/ssh/ssh_host_ed25519_key, is created by services.openssh)", c.IdentityFile)}
		}
		return "", &ConfigError{fmt.Errorf("identityFile: %w", err)}
	}
	if !fi.Mode().IsRegular() {
		return "", &ConfigError{fmt.Errorf("identityFile %s is not a regular file", c.IdentityFile)}
	}
	f, err := os.Open(c.IdentityFile)
	if err != nil {
		return "", &ConfigError{fmt.Errorf("identityFile %s cannot be read (%w): the agent runs as root and needs to read it", c.IdentityFile, err)}
	}
	f.Close()
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Sprintf("identityFile %s is readable by group or others (mode %04o): chmod 600 %s", c.IdentityFile, perm, c.IdentityFile), nil
	}
	return "", nil
}

// PublicationKeys are the pinned publication keys (none: manifests are
// not verified).
func (c *Config) PublicationKeys() ([]manifest.PublicationKey, error) {
	var keys []manifest.PublicationKey
	for _, f := range strings.Fields(c.PublicationKey) {
		if strings.HasPrefix(f, "/") {
			// BENTO_PUBLICATION_KEY is also deploy's secret key file.
			return nil, fmt.Errorf("publicationKey %q is a file path, not a key: give the public key itself, the content of the .pub file bento keygen --publication wrote", f)
		}
		k, err := manifest.ParsePublicationKey(f)
		if err != nil {
			return nil, fmt.Errorf("publicationKey: %w: set services.bento.publicationKey (--publication-key) to the line bento keygen --publication printed", err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
