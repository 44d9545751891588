// Package manifest defines the two documents that cross the chroot: the
// manifest the server publishes (manifest.json, versioned by
// ManifestFormat) and the report a client uploads (reports/status.json,
// versioned by ReportFormat).
package manifest

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"
)

// Format numbers. Format 1 manifests name the files under
// config/<version>/; a manifest of format 2 names each file's content by its
// sha256 under objects/. Clients read both; reports are format 1.
const (
	// ManifestFormat is the newest manifest format: what a client reads.
	ManifestFormat = 2
	// MinManifestFormat is the oldest manifest format a client still reads.
	MinManifestFormat = 1
	ReportFormat      = 1
	// Format is the report's format number (the name predates format 2 of
	// the manifest; report writers use it).
	Format = ReportFormat
)

// VersionLen is how many lowercase hex digits name a version.
const VersionLen = 16

// Names of the files and directories inside a host's chroot.
const (
	ManifestFile = "manifest.json"
	// ConfigDir held format 1's per-version trees; a deploy migrates it away.
	ConfigDir = "config"
	// ObjectsDir holds one read-only file per distinct content (format 2).
	ObjectsDir = "objects"
	ReportsDir = "reports"
	StatusFile = "reports/status.json"
	LogsDir    = "reports/logs"
	SecretsDir = "secrets"
	CacheDir   = "cache"
)

// MaxSize is the largest manifest a client accepts.
const MaxSize = 64 << 20

// Manifest is what is published for one host now.
type Manifest struct {
	Format int    `json:"format"`
	Host   string `json:"host"`
	// Version is the content hash of the published tree (and secrets).
	Version string `json:"version"`
	// Sequence numbers the host's publications: the publisher gives each
	// manifest it writes a number above every earlier one (never reused,
	// even after a crash), so an agent refuses an older publication
	// replayed to it. 0: a publisher that predates sequences.
	Sequence    uint64    `json:"sequence,omitempty"`
	PublishedAt time.Time `json:"publishedAt"`
	// ExpectedToplevel is the store path the server built for the host;
	// empty when published without a build.
	ExpectedToplevel string `json:"expectedToplevel,omitempty"`
	Flake            Flake  `json:"flake"`
	Files            []File `json:"files"`
	// Secrets are listed by name, size and hash, never content.
	Secrets []File `json:"secrets,omitempty"`
	// Cache is set when the chroot holds a binary cache of the host's closure.
	Cache *Cache `json:"cache,omitempty"`
	// Interval is the host's poll schedule (services.bento.interval), so
	// that bento status can tell a silent host without evaluating the flake.
	Interval string `json:"interval,omitempty"`
	// NextPublicationKey announces the key that will sign this host's
	// publications after a rotation (name:base64); covered by the
	// signature of the current key (see sign.go).
	NextPublicationKey string `json:"nextPublicationKey,omitempty"`
	// Signature is the publisher's Ed25519 signature, always the last
	// member of the file: it signs the file's bytes without it (sign.go).
	Signature *Signature `json:"signature,omitempty"`
}

// Flake says what to build from the published tree.
type Flake struct {
	// Attr is the host's attribute path, e.g. nixosConfigurations.alpha.
	Attr string `json:"attr"`
	// Layout is "flake" (default) or "classic" (configuration.nix at the
	// root of the tree, built with <nixpkgs/nixos>).
	Layout string `json:"layout,omitempty"`
}

// Cache describes the per-host binary cache in the chroot.
type Cache struct {
	// Dir is relative to the chroot root, e.g. "cache".
	Dir string `json:"dir"`
	// PublicKey is the fleet's signing key, name:base64.
	PublicKey string `json:"publicKey,omitempty"`
}

// File is one published file.
type File struct {
	Path   string `json:"path"`
	Mode   uint32 `json:"mode"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// ConfigPath is the directory of a format-1 version relative to the
// chroot root.
func ConfigPath(version string) string { return ConfigDir + "/" + version }

// ObjectPath is where a format-2 chroot keeps the content whose sha256 is
// sum (64 lowercase hex digits), relative to the chroot root: fanned out
// by the first two digits, as git does.
func ObjectPath(sum string) string { return ObjectsDir + "/" + sum[:2] + "/" + sum[2:] }

// RemotePath is where f's content is read from in the chroot of m.
func (m *Manifest) RemotePath(f File) string {
	if m.Format == 1 {
		return ConfigPath(m.Version) + "/" + f.Path
	}
	return ObjectPath(f.SHA256)
}

// Parse decodes and validates a manifest. It refuses anything a client
// must not act on: unknown format, paths that escape the tree, absurd sizes.
func Parse(data []byte) (*Manifest, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("manifest is %d bytes, over the %d limit", len(data), MaxSize)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest: invalid JSON: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks the manifest's invariants.
func (m *Manifest) Validate() error {
	if m.Format < MinManifestFormat || m.Format > ManifestFormat {
		return fmt.Errorf("manifest: format %d is not supported (this bento reads formats %d to %d); upgrade bento", m.Format, MinManifestFormat, ManifestFormat)
	}
	if !IsVersion(m.Version) {
		return fmt.Errorf("manifest: invalid version %q (want %d lowercase hex digits)", clip(m.Version), VersionLen)
	}
	if err := m.validateKeys(); err != nil {
		return err
	}
	for _, list := range [][]File{m.Files, m.Secrets} {
		if err := validateFiles(list); err != nil {
			return err
		}
	}
	return nil
}

// validateKeys checks the optional expectedToplevel and
// nextPublicationKey.
func (m *Manifest) validateKeys() error {
	if m.ExpectedToplevel != "" {
		if err := CheckStorePath(m.ExpectedToplevel, ""); err != nil {
			return fmt.Errorf("manifest: expectedToplevel: %w", err)
		}
	}
	if m.NextPublicationKey != "" {
		if _, err := ParsePublicationKey(m.NextPublicationKey); err != nil {
			return fmt.Errorf("manifest: nextPublicationKey: %w", err)
		}
	}
	return nil
}

// validateFiles checks a list of files (Files or Secrets): safe paths,
// each once, sizes and hashes.
func validateFiles(list []File) error {
	seen := make(map[string]bool, len(list))
	for _, f := range list {
		if err := ValidatePath(f.Path); err != nil {
			return fmt.Errorf("manifest: %w", err)
		}
		if seen[f.Path] {
			return fmt.Errorf("manifest: %s listed twice", f.Path)
		}
		seen[f.Path] = true
		if f.Size < 0 {
			return fmt.Errorf("manifest: %s: negative size", f.Path)
		}
		if !isHex(f.SHA256, 64) {
			return fmt.Errorf("manifest: %s: sha256 must be 64 lowercase hex digits", f.Path)
		}
	}
	return nil
}

// IsVersion tells whether v has the form of a version: VersionLen
// lowercase hex digits (so it is safe as a file name, and never "current").
func IsVersion(v string) bool { return isHex(v, VersionLen) }

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// nixBase32 is Nix's base32 alphabet (no e, o, u, t).
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

// CheckStorePath checks that p has the form of a store path,
// <storeDir>/<32 nix-base32 characters>-<name>, exactly one component
// under the store directory. With storeDir "" any clean absolute
// directory is accepted as the store's (the manifest parser does not know
// the client's); a client passes its own.
func CheckStorePath(p, storeDir string) error {
	bad := func(why string) error {
		return fmt.Errorf("%q is not a store path (%s; want <store>/<32 nix-base32 characters>-<name>)", clip(p), why)
	}
	if len(p) > 4096 || !strings.HasPrefix(p, "/") || path.Clean(p) != p {
		return bad("not a clean absolute path")
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if storeDir != "" && dir != storeDir {
		return bad("not directly in " + storeDir)
	}
	if dir == "" {
		return bad("no store directory")
	}
	if why := storeBaseProblem(base); why != "" {
		return bad(why)
	}
	return nil
}

// storeBaseProblem says what is wrong with the last component of a store
// path, <32 nix-base32 characters>-<name>, or "".
func storeBaseProblem(base string) string {
	if len(base) < 34 || base[32] != '-' {
		return "no hash"
	}
	for i := 0; i < 32; i++ {
		if !strings.ContainsRune(nixBase32, rune(base[i])) {
			return "the hash is not nix-base32"
		}
	}
	name := base[33:]
	if len(name) > 211 || name[0] == '.' {
		return "invalid name"
	}
	for i := 0; i < len(name); i++ {
		if !storeNameByte(name[i]) {
			return "invalid character in the name"
		}
	}
	return ""
}

func storeNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0
}

// clip shortens host-controlled text quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// ValidatePath refuses a path that is absolute, not clean, or escapes the tree.
func ValidatePath(p string) error {
	if hasUnsafeChar(p) || !cleanRelative(p) || hasUnsafePart(p) {
		return fmt.Errorf("unsafe path %q", p)
	}
	return nil
}

// hasUnsafeChar: p is empty, absolute, or has a backslash or a NUL.
func hasUnsafeChar(p string) bool {
	return p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\\") || strings.ContainsRune(p, 0)
}

// cleanRelative: p is clean and does not start above the tree.
func cleanRelative(p string) bool {
	return path.Clean(p) == p && p != "." && p != ".." && !strings.HasPrefix(p, "../")
}

// hasUnsafePart: a component of p is .., . or .git.
func hasUnsafePart(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." || part == ".git" {
			return true
		}
	}
	return false
}

// Stage is how far a client got with a version.
type Stage string

const (
	StageFetched    Stage = "fetched"
	StageBuilt      Stage = "built"
	StageSwitched   Stage = "switched"
	StageConfirmed  Stage = "confirmed"
	StageRolledBack Stage = "rolled-back"
	StageFailed     Stage = "failed"
)

// Why a client rolled a version back: Report.RollbackReason.
const (
	RollbackActivationFailed  = "activation-failed"
	RollbackServerUnreachable = "server-unreachable"
	// RollbackInterrupted: the agent stopped (a crash, a reboot) before
	// the switch took effect, and the next start undid it.
	RollbackInterrupted = "interrupted"
	// RollbackHealthCheck: a health check of the new system failed
	// (services.bento.healthChecks); Report.Health holds the results.
	RollbackHealthCheck = "health-check"
)

// How a host gets its system (services.bento.mode, the agent's mode).
const (
	// ModeBuild evaluates and builds the published tree on the host.
	ModeBuild = "build"
	// ModeFetch realises the server's build from the substituters,
	// evaluating nothing.
	ModeFetch = "fetch"
)

// Result is the outcome of one attempt.
type Result string

const (
	ResultSuccess     Result = "success"
	ResultFailure     Result = "failure"
	ResultRolledBack  Result = "rolled-back"
	ResultAutoUpdated Result = "auto-updated"
	ResultUnchanged   Result = "unchanged"
)

// Report is what a client uploads as reports/status.json after every attempt.
type Report struct {
	Format int    `json:"format"`
	Host   string `json:"host"`
	// SeenVersion is the published version the client read this time.
	SeenVersion string `json:"seenVersion"`
	// AppliedVersion is the version now active on the host ("" if none yet).
	AppliedVersion string `json:"appliedVersion"`
	// AttemptedVersion is the version this attempt tried.
	AttemptedVersion string `json:"attemptedVersion"`
	Stage            Stage  `json:"stage"`
	Result           Result `json:"result"`
	Error            string `json:"error,omitempty"`
	// Summary is Error without the command lines it quotes: the step
	// and the tool's own message ("build: error: builder for … failed"),
	// what a status row has room for. Error itself when it quotes none;
	// empty in reports of agents before it.
	Summary string `json:"summary,omitempty"`
	// RollbackReason says which trigger fired: "activation-failed" or
	// "server-unreachable".
	RollbackReason   string `json:"rollbackReason,omitempty"`
	ExpectedToplevel string `json:"expectedToplevel,omitempty"`
	// ActualToplevel is what the client built or fetched.
	ActualToplevel string `json:"actualToplevel,omitempty"`
	// Reproducible is ExpectedToplevel == ActualToplevel, when both are known.
	Reproducible   *bool  `json:"reproducible,omitempty"`
	CurrentSystem  string `json:"currentSystem,omitempty"`
	BootedSystem   string `json:"bootedSystem,omitempty"`
	RebootRequired bool   `json:"rebootRequired"`
	// RebootScheduled is when a reboot is planned (policy window), if any.
	RebootScheduled *time.Time `json:"rebootScheduled,omitempty"`
	Mode            string     `json:"mode,omitempty"`
	Operation       string     `json:"operation,omitempty"`
	AgentVersion    string     `json:"agentVersion,omitempty"`
	StartedAt       time.Time  `json:"startedAt"`
	FinishedAt      time.Time  `json:"finishedAt"`
	// Log is the name of the uploaded log under reports/logs/.
	Log string `json:"log,omitempty"`
	// BytesFetched counts what this update downloaded (files and NARs).
	BytesFetched int64 `json:"bytesFetched,omitempty"`
	// Attempts counts consecutive attempts of AttemptedVersion.
	Attempts int `json:"attempts,omitempty"`
	// NextRetry is when a failed version will be tried again.
	NextRetry *time.Time `json:"nextRetry,omitempty"`
	// SecretErrors names secrets that could not be installed (never content).
	SecretErrors map[string]string `json:"secretErrors,omitempty"`
	// Server is "address:port" of the server (primary or mirror) this
	// report was delivered to (services.bento.servers).
	Server string `json:"server,omitempty"`
	// Health is the last run of the host's health checks: after a switch
	// (against the new system), or on a quiet tick (continuous checks).
	// Readers treat a host as healthy when it is nil or OK.
	Health *Health `json:"health,omitempty"`
	// PreviousHealth is the checks' result against the old system after a
	// health-check rollback: whether rolling back helped.
	PreviousHealth *Health `json:"previousHealth,omitempty"`
}

// Health is one run of a host's health checks.
type Health struct {
	// System is the system the checks ran against.
	System    string    `json:"system,omitempty"`
	CheckedAt time.Time `json:"checkedAt"`
	// OK is true when every check passed.
	OK     bool          `json:"ok"`
	Checks []HealthCheck `json:"checks,omitempty"`
}

// Health check kinds (HealthCheck.Kind).
const (
	HealthUnit    = "unit"
	HealthCommand = "command"
	HealthHTTP    = "http"
)

// MaxHealthOutput bounds HealthCheck.Output: a host's text, quoted by
// status, is kept short.
const MaxHealthOutput = 2 << 10

// HealthCheck is the result of one check.
type HealthCheck struct {
	Name string `json:"name"`
	// Kind is unit, command or http.
	Kind     string `json:"kind"`
	OK       bool   `json:"ok"`
	Attempts int    `json:"attempts"`
	// Output is the tail of what the last attempt printed or why it
	// failed, at most MaxHealthOutput bytes.
	Output string `json:"output,omitempty"`
}

// Failing returns the first failing check, nil when there is none.
func (h *Health) Failing() *HealthCheck {
	if h == nil {
		return nil
	}
	for i := range h.Checks {
		if !h.Checks[i].OK {
			return &h.Checks[i]
		}
	}
	return nil
}
