// Package builder builds the system (config.system.build.toplevel) of many
// hosts at once, each in its own nix processes, so that one failing host
// never stops the others. Every host gets its own log file per run, a GC
// root for its current and previous build (so the server can serve both as
// a substituter and status/diff can compare against them), a record of its
// last successful build, and optionally a push of its closure to a cache.
//
// A host goes through two stages: evaluation (nix eval of the toplevel's
// drvPath, which instantiates it), at most EvalJobs at once, then the
// build of that derivation (nix-store --realise), at most Jobs at once.
// Evaluation is CPU- and memory-bound and builds are often I/O-bound or
// remote, so the two limits differ, and the next hosts are evaluated while
// others build: a build slot never waits for an evaluation.
package builder

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/nix"
)

// DefaultStateDir is where GC roots, logs and build records live when
// Options.StateDir is empty.
const DefaultStateDir = "/var/lib/bento"

// ToplevelSub is the attribute of a host's configuration that is built.
const ToplevelSub = "config.system.build.toplevel"

// Options tune a build.
type Options struct {
	// Jobs is how many hosts build at once; must be at least 1.
	Jobs int
	// EvalJobs is how many hosts are evaluated at once; 0 means
	// min(Jobs, number of CPUs).
	EvalJobs int
	// EvalChunk and EvalMemory size the chunked evaluation of the hosts'
	// derivations as in discovery (eval.Options.ChunkSize and Memory);
	// 0 is automatic.
	EvalChunk  int
	EvalMemory int64
	// DrvPaths are hosts' derivations instantiated already (by discovery,
	// eval.Options.DrvPath, from the same flake); those hosts are not
	// evaluated again.
	DrvPaths map[string]string
	// StateDir holds gcroots/, logs/ and builds/; DefaultStateDir when empty.
	StateDir string
	// DryRun evaluates and instantiates only: drv paths, nothing built,
	// no GC root, no record.
	DryRun bool
	// CopyTo is a Nix store URL every successful build is copied to
	// (nix copy --to); "" copies nothing.
	CopyTo string
	// SignKey is a secret key file; when set, each closure is signed with it
	// (nix store sign) before it is copied.
	SignKey string
	// Builders is passed to nix as the builders setting when set.
	Builders string
	// MaxJobs is passed to nix as --max-jobs when > 0. Each host's nix
	// process has its own max-jobs (there is no global limit without a
	// daemon, nor across daemon clients), so up to Jobs × MaxJobs
	// derivations build at once. 0 leaves Nix's own setting.
	MaxJobs int
	// Progress receives live events; nil is silent.
	Progress Progress
}

// Status is how a host's build ended.
type Status string

const (
	StatusBuilt     Status = "built"
	StatusFailed    Status = "failed"
	StatusDryRun    Status = "dry-run"
	StatusCancelled Status = "cancelled"
)

// Result is one host's build.
type Result struct {
	Host   string
	Status Status
	// Err says why the build failed or was cancelled; it wraps a *nix.Error
	// when Nix failed.
	Err error
	// Duration is the time spent evaluating, building and copying the
	// host, not the time it waited for a free build slot.
	Duration time.Duration
	// OutPath is the host's toplevel. With DryRun it is the path the build
	// would produce (it does not exist).
	OutPath string
	DrvPath string
	// LogFile holds Nix's full output for this host and run.
	LogFile string
	// Unchanged is set when the host's derivation and GC root were those of
	// its last successful build, so nothing was realised again.
	Unchanged bool
	// CopyErr is set when the build succeeded but copying it to
	// Options.CopyTo (or signing it) failed.
	CopyErr error
}

// OK reports whether the host needs no attention: built (or instantiated
// in a dry run) and, when asked, copied. A build whose copy failed is still
// built (its GC roots and record are kept) but not OK.
func (r Result) OK() bool {
	return (r.Status == StatusBuilt || r.Status == StatusDryRun) && r.Err == nil && r.CopyErr == nil
}

// Reason is a short, one-paragraph explanation of what went wrong, empty
// when OK. It prefers Nix's own message over the whole command line.
func (r Result) Reason() string {
	switch {
	case r.Err != nil:
		return withoutHost(r.Err)
	case r.CopyErr != nil:
		return withoutHost(r.CopyErr)
	}
	return ""
}

// withoutHost is a result's error for a line that names the host
// already: "stage: cause".
func withoutHost(err error) string {
	var he *fleet.HostError
	if errors.As(err, &he) {
		return (&fleet.HostError{Host: he.Host, Stage: he.Stage, Err: brief(he.Err)}).Detail()
	}
	return brief(err).Error()
}

// nixMessage is a failed nix command as a summary shows it: Nix's own
// message, not the command line, which the *nix.Error it wraps keeps
// (for errors.As, and the log).
type nixMessage struct{ ne *nix.Error }

func (m nixMessage) Error() string {
	if m.ne.Message != "" {
		return m.ne.Message
	}
	return m.ne.Error()
}

func (m nixMessage) Unwrap() error { return m.ne }

// brief gives a nix command's error its short form; any other error
// stays as it is. Wrap it right where the command failed, before adding
// context, so that the context is kept.
func brief(err error) error {
	if ne, ok := err.(*nix.Error); ok {
		return nixMessage{ne}
	}
	return err
}

// hostError is a failure of host at one stage (build, copy…). Its
// message is short ("host alpha: build: error: …"); the *nix.Error it
// wraps keeps the full command for errors.As.
func hostError(host, stage string, err error) *fleet.HostError {
	return &fleet.HostError{Host: host, Stage: stage, Err: brief(err)}
}

// StateDirError is a state directory Build cannot use: nothing was built.
// Problem is what is wrong with it ("" when the path itself is).
type StateDirError struct {
	Dir     string
	Problem string
	Err     error
}

func (e *StateDirError) Error() string {
	s := "build: state directory " + e.Dir
	if e.Problem != "" {
		s += " " + e.Problem
	}
	return s + ": " + e.Err.Error()
}

func (e *StateDirError) Unwrap() error { return e.Err }

// MarshalJSON gives scripts the same facts as the summary table.
func (r Result) MarshalJSON() ([]byte, error) {
	type out struct {
		Host     string  `json:"host"`
		Status   Status  `json:"state"`
		OK       bool    `json:"ok"`
		Duration float64 `json:"durationSeconds"`
		OutPath  string  `json:"outPath,omitempty"`
		DrvPath  string  `json:"drvPath,omitempty"`
		LogFile  string  `json:"logFile,omitempty"`
		Error    string  `json:"error,omitempty"`
		CopyErr  string  `json:"copyError,omitempty"`
		// Unchanged: not realised again (see Result.Unchanged).
		Unchanged bool `json:"unchanged,omitempty"`
	}
	o := out{Host: r.Host, Status: r.Status, OK: r.OK(), Duration: r.Duration.Round(time.Millisecond).Seconds(),
		OutPath: r.OutPath, DrvPath: r.DrvPath, LogFile: r.LogFile, Unchanged: r.Unchanged}
	if r.Err != nil {
		o.Error = withoutHost(r.Err)
	}
	if r.CopyErr != nil {
		o.CopyErr = withoutHost(r.CopyErr)
	}
	return json.Marshal(o)
}

// validate checks hosts and opts, and fills opts' automatic values.
func validate(hosts []fleet.Host, opts *Options) error {
	if err := validateJobs(opts); err != nil {
		return err
	}
	if err := validateHosts(hosts); err != nil {
		return err
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	abs, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return &StateDirError{Dir: opts.StateDir, Err: err}
	}
	opts.StateDir = abs
	return validateSignKey(opts)
}

// validateJobs checks the limits, and sets EvalJobs when automatic.
func validateJobs(opts *Options) error {
	if opts.Jobs < 1 {
		return fmt.Errorf("build: jobs must be at least 1, got %d", opts.Jobs)
	}
	if opts.EvalJobs < 0 {
		return fmt.Errorf("build: eval jobs must be 0 (automatic) or more, got %d", opts.EvalJobs)
	}
	if opts.EvalJobs == 0 {
		opts.EvalJobs = min(opts.Jobs, runtime.NumCPU())
	}
	if opts.MaxJobs < 0 {
		return fmt.Errorf("build: max-jobs must be 0 (Nix's setting) or more, got %d", opts.MaxJobs)
	}
	return nil
}

// validateHosts wants at least one host, each named validly and once.
func validateHosts(hosts []fleet.Host) error {
	if len(hosts) == 0 {
		return errors.New("build: no host to build")
	}
	seen := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		if err := fleet.ValidateName(h.Name); err != nil {
			return fmt.Errorf("build: %w", err)
		}
		if seen[h.Name] {
			return fmt.Errorf("build: host %s is listed twice", h.Name)
		}
		seen[h.Name] = true
	}
	return nil
}

// validateSignKey checks that a signing key has something to sign (a
// copy) and can be opened.
func validateSignKey(opts *Options) error {
	if opts.SignKey == "" {
		return nil
	}
	if opts.CopyTo == "" {
		return errors.New("build: a signing key (--sign-key) only signs what is copied: add --copy-to STORE_URL")
	}
	f, err := os.Open(opts.SignKey)
	if err != nil {
		return fmt.Errorf("build: signing key: %w (make one with: nix key generate-secret --key-name NAME > FILE)", err)
	}
	f.Close()
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
