// Package builder builds the system (config.system.build.toplevel) of many
// hosts at once, each in its own nix process, so that one failing host never
// stops the others. Every host gets its own log file per run, a GC root for
// its current and previous build (so the server can serve both as a
// substituter and status/diff can compare against them), a record of its
// last successful build, and optionally a push of its closure to a cache.
package builder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

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
	// Builders is passed to nix as --builders when set.
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
	Err      error
	Duration time.Duration
	// OutPath is the host's toplevel. With DryRun it is the path the build
	// would produce (it does not exist).
	OutPath string
	DrvPath string
	// LogFile holds Nix's full output for this host and run.
	LogFile string
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

func withoutHost(err error) string {
	var he *HostError
	if errors.As(err, &he) {
		return he.Stage + ": " + errMessage(he.Err)
	}
	return errMessage(err)
}

// errMessage is err without the host prefix and the nix command line:
// what a summary table wants next to the host's name.
func errMessage(err error) string {
	var he *HostError
	if errors.As(err, &he) {
		err = he.Err
	}
	var ne *nix.Error
	if errors.As(err, &ne) && ne.Message != "" {
		msg := ne.Message
		// Keep the context added around the nix error ("to file://…: ").
		if s := err.Error(); strings.HasSuffix(s, ne.Error()) {
			msg = strings.TrimSuffix(s, ne.Error()) + msg
		}
		return msg
	}
	return err.Error()
}

// HostError is a failure of one host at one stage (build, copy…). Its
// message is short ("host alpha: build: error: …"); the *nix.Error it
// wraps keeps the full command for errors.As.
type HostError struct {
	Host  string
	Stage string
	Err   error
}

func (e *HostError) Error() string {
	return fmt.Sprintf("host %s: %s: %s", e.Host, e.Stage, errMessage(e.Err))
}

func (e *HostError) Unwrap() error { return e.Err }

// MarshalJSON gives scripts the same facts as the summary table.
func (r Result) MarshalJSON() ([]byte, error) {
	type out struct {
		Host     string  `json:"host"`
		Status   Status  `json:"status"`
		OK       bool    `json:"ok"`
		Duration float64 `json:"durationSeconds"`
		OutPath  string  `json:"outPath,omitempty"`
		DrvPath  string  `json:"drvPath,omitempty"`
		LogFile  string  `json:"logFile,omitempty"`
		Error    string  `json:"error,omitempty"`
		CopyErr  string  `json:"copyError,omitempty"`
	}
	o := out{Host: r.Host, Status: r.Status, OK: r.OK(), Duration: r.Duration.Round(time.Millisecond).Seconds(),
		OutPath: r.OutPath, DrvPath: r.DrvPath, LogFile: r.LogFile}
	if r.Err != nil {
		o.Error = withoutHost(r.Err)
	}
	if r.CopyErr != nil {
		o.CopyErr = withoutHost(r.CopyErr)
	}
	return json.Marshal(o)
}

// Build builds hosts, at most opts.Jobs at once, and returns one Result
// per host in the order given. The error is only for problems that stop
// everything before the first build (bad options, unusable state
// directory); a host's failure, and cancellation, live in its Result.
func Build(ctx context.Context, r *nix.Runner, hosts []fleet.Host, opts Options) ([]Result, error) {
	if r == nil {
		r = &nix.Runner{}
	}
	if err := validate(hosts, &opts); err != nil {
		return nil, err
	}
	st, err := openState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	b := &build{runner: r, opts: opts, state: st, stamp: logStamp(time.Now())}
	prog := opts.Progress
	if prog == nil {
		prog = silent{}
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	prog.Begin(names)

	results := make([]Result, len(hosts))
	// Not errgroup.WithContext: one host failing must not cancel the others.
	var g errgroup.Group
	g.SetLimit(opts.Jobs)
	for i, h := range hosts {
		if ctx.Err() != nil {
			results[i] = Result{Host: h.Name, Status: StatusCancelled, Err: &HostError{Host: h.Name, Stage: "build", Err: fmt.Errorf("not started: %w", context.Cause(ctx))}}
			prog.Done(results[i])
			continue
		}
		g.Go(func() error {
			results[i] = b.host(ctx, h, prog)
			prog.Done(results[i])
			return nil
		})
	}
	_ = g.Wait()
	prog.End()
	return results, nil
}

func validate(hosts []fleet.Host, opts *Options) error {
	if opts.Jobs < 1 {
		return fmt.Errorf("build: jobs must be at least 1, got %d", opts.Jobs)
	}
	if opts.MaxJobs < 0 {
		return fmt.Errorf("build: max-jobs must be 0 (Nix's setting) or more, got %d", opts.MaxJobs)
	}
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
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	abs, err := filepath.Abs(opts.StateDir)
	if err != nil {
		return fmt.Errorf("build: state directory %s: %w", opts.StateDir, err)
	}
	opts.StateDir = abs
	if opts.SignKey != "" {
		if opts.CopyTo == "" {
			return errors.New("build: a signing key (--sign-key) only signs what is copied: add --copy-to STORE_URL")
		}
		f, err := os.Open(opts.SignKey)
		if err != nil {
			return fmt.Errorf("build: signing key: %w (make one with: nix key generate-secret --key-name NAME > FILE)", err)
		}
		f.Close()
	}
	return nil
}

// build is one run of Build.
type build struct {
	runner *nix.Runner
	opts   Options
	state  *stateDir
	stamp  string
}

// nixBuildOutput is one element of nix build --json.
type nixBuildOutput struct {
	DrvPath string            `json:"drvPath"`
	Outputs map[string]string `json:"outputs"`
}

func (b *build) host(ctx context.Context, h fleet.Host, prog Progress) Result {
	start := time.Now()
	res := Result{Host: h.Name}
	finish := func(err error) Result {
		res.Duration = time.Since(start)
		if err != nil {
			res.Err = err
			res.Status = StatusFailed
			if ctx.Err() != nil {
				res.Status = StatusCancelled
			}
		}
		return res
	}

	logf, err := b.state.newLog(h.Name, b.stamp)
	if err != nil {
		return finish(&HostError{Host: h.Name, Stage: "build", Err: err})
	}
	defer logf.Close()
	res.LogFile = logf.Name()
	lw := newLineWriter(logf, h.Name, prog, b.opts.DryRun)
	defer lw.Flush()

	prog.Phase(h.Name, PhaseEvaluating)
	args := []string{"build", "--json", "--print-build-logs"}
	var link string
	if b.opts.DryRun {
		args = append(args, "--dry-run", "--no-link")
	} else {
		link, err = b.state.tempLink(h.Name)
		if err != nil {
			return finish(&HostError{Host: h.Name, Stage: "build", Err: err})
		}
		// The out link is registered as a GC root by nix itself, so the
		// result is never collectable between the build and the rotation
		// of current/previous.
		args = append(args, "--out-link", link)
		defer b.state.removeTempLink(link)
	}
	if b.opts.Builders != "" {
		args = append(args, "--builders", b.opts.Builders)
	}
	if b.opts.MaxJobs > 0 {
		args = append(args, "--max-jobs", strconv.Itoa(b.opts.MaxJobs))
	}
	args = append(args, h.Installable(ToplevelSub)...)
	fmt.Fprintf(logf, "bento: building %s, started %s\nbento: $ nix %s\n", h.Name, start.Format(time.RFC3339), strings.Join(args, " "))

	out, err := b.runner.Run(ctx, nix.Cmd{Host: h.Name, Args: args, Log: lw})
	lw.Flush()
	if err != nil {
		fmt.Fprintf(logf, "bento: %s\n", errMessage(err))
		return finish(&HostError{Host: h.Name, Stage: "build", Err: err})
	}
	var outs []nixBuildOutput
	if err := json.Unmarshal(out, &outs); err != nil || len(outs) != 1 || outs[0].Outputs["out"] == "" {
		return finish(&HostError{Host: h.Name, Stage: "build", Err: fmt.Errorf("unexpected output of nix build --json (%q): want one derivation with an \"out\" output", truncate(string(out), 200))})
	}
	res.DrvPath, res.OutPath = outs[0].DrvPath, outs[0].Outputs["out"]
	if b.opts.DryRun {
		res.Status = StatusDryRun
		fmt.Fprintf(logf, "bento: dry run: would build %s\n", res.OutPath)
		return finish(nil)
	}

	// The build is done: keep it even if the run is being cancelled, so
	// that what was built is never half-recorded.
	keepCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	err = b.state.keep(keepCtx, b.runner, Record{Host: h.Name, OutPath: res.OutPath, DrvPath: res.DrvPath, BuiltAt: time.Now().UTC()})
	cancel()
	if err != nil {
		return finish(&HostError{Host: h.Name, Stage: "keep result", Err: err})
	}
	res.Status = StatusBuilt
	fmt.Fprintf(logf, "bento: built %s\n", res.OutPath)

	if b.opts.CopyTo != "" {
		prog.Phase(h.Name, PhaseCopying)
		err := b.copy(ctx, h.Name, res.OutPath, lw)
		lw.Flush()
		if err != nil {
			res.CopyErr = &HostError{Host: h.Name, Stage: "copy to " + b.opts.CopyTo, Err: err}
			fmt.Fprintf(logf, "bento: %s\n", errMessage(err))
		} else {
			fmt.Fprintf(logf, "bento: copied to %s\n", b.opts.CopyTo)
		}
	}
	return finish(nil)
}

// copy pushes the closure of path to opts.CopyTo, signing it first when a
// key is given: signatures live in the local store's database and travel
// with nix copy to any kind of store, unlike the secret-key URL parameter
// that only binary-cache stores understand.
func (b *build) copy(ctx context.Context, host, path string, lw *lineWriter) error {
	if b.opts.SignKey != "" {
		if _, err := b.runner.Run(ctx, nix.Cmd{Host: host, Args: []string{"store", "sign", "--recursive", "--key-file", b.opts.SignKey, path}, Log: lw}); err != nil {
			return fmt.Errorf("signing: %w", err)
		}
	}
	_, err := b.runner.Run(ctx, nix.Cmd{Host: host, Args: []string{"copy", "--to", b.opts.CopyTo, path}, Log: lw})
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
