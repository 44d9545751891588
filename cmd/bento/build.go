package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/builder/progress"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/table"
)

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build every deployed host's system in parallel, keep the results, report per host",
		ArgsUsage: "[HOST|GLOB|@TAG]...",
		Description: "Builds nixosConfigurations.<host>.config.system.build.toplevel of the selected hosts\n" +
			"that bento deploys (services.bento.enable = true), --jobs at a time, each in its own nix\n" +
			"process: one failing host never stops the others. Each host gets a log file per run and GC\n" +
			"roots for its current and previous build under --state-dir. Exits 1 when any host failed.",
		Flags: append(append(fleetFlags(), buildFlags()...),
			&cli.BoolFlag{Name: "json", Usage: "print the results as JSON for scripts"},
		),
		Action: runBuild,
	}
}

// buildFlags are the flags of every command that builds hosts (build, deploy).
func buildFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, DefaultText: "auto", Usage: "hosts built at once (one nix process each); default: one per Nix build user (members of build-users-group in /etc/group, from nix.conf/NIX_CONFIG; nixbld for root or through a Nix daemon), divided by max-jobs when that is above 1 but at least the CPUs; two per CPU without build users"},
		&cli.IntFlag{Name: "max-jobs", Usage: "passed to each host's nix as --max-jobs (0: Nix's own setting); up to jobs × max-jobs derivations build at once"},
		&cli.StringFlag{Name: "state-dir", Value: builder.DefaultStateDir, Usage: "where GC roots, build logs and build records live", EnvVars: []string{"BENTO_STATE_DIR"}},
		&cli.BoolFlag{Name: "dry-run", Usage: "evaluate and instantiate only (drv paths), build nothing"},
		&cli.StringFlag{Name: "copy-to", Usage: "copy each built closure to this Nix store (file:///dir, s3://bucket, ssh-ng://host…)", EnvVars: []string{"BENTO_COPY_TO"}},
		&cli.StringFlag{Name: "sign-key", Usage: "sign what is copied with this secret key file (nix key generate-secret)", EnvVars: []string{"BENTO_SIGN_KEY"}},
		&cli.StringFlag{Name: "builders", Usage: "passed to nix as --builders (remote builders); default: Nix's configuration"},
	}
}

// buildOptions reads buildFlags. The progress display goes to the
// command's error stream: live on a terminal, plain lines otherwise.
func buildOptions(c *cli.Context) (builder.Options, error) {
	jobs := buildJobs(c)
	evalOpts, err := evalOptions(c)
	if err != nil {
		return builder.Options{}, err
	}
	opts := builder.Options{
		Jobs: jobs,
		// --eval-jobs (a fleet flag) bounds nix evaluations, in discovery
		// and here alike, and --eval-chunk/--eval-memory size them.
		EvalJobs:   c.Int("eval-jobs"),
		EvalChunk:  evalOpts.ChunkSize,
		EvalMemory: evalOpts.Memory,
		MaxJobs:    c.Int("max-jobs"),
		StateDir:   c.String("state-dir"),
		DryRun:     c.Bool("dry-run"),
		CopyTo:     c.String("copy-to"),
		SignKey:    c.String("sign-key"),
		Builders:   c.String("builders"),
	}
	if err := checkBuildOptions(c, &opts); err != nil {
		return opts, err
	}
	w := errWriter(c)
	if isTerminal(w) {
		opts.Progress = progress.NewLive(w, useColor(c, w))
	} else {
		opts.Progress = progress.NewPlain(w)
	}
	return opts, nil
}

// buildJobs is --jobs, or the default the system's build users give.
func buildJobs(c *cli.Context) int {
	if c.IsSet("jobs") {
		return c.Int("jobs")
	}
	jobs, why := builder.DefaultJobs(builder.SystemJobsEnv())
	logger(c).Debug("default --jobs", "jobs", jobs, "why", why)
	return jobs
}

// checkBuildOptions refuses flag values that cannot work together, and
// drops the copy of a dry run.
func checkBuildOptions(c *cli.Context, opts *builder.Options) error {
	switch {
	case opts.Jobs < 1:
		return usageError("--jobs must be at least 1, got %d", opts.Jobs)
	case opts.EvalJobs < 0:
		return usageError("--eval-jobs must be at least 1, got %d", c.Int("eval-jobs"))
	case opts.MaxJobs < 0:
		return usageError("--max-jobs must be 0 (Nix's own setting) or more, got %d", opts.MaxJobs)
	case opts.StateDir == "":
		return usageError("--state-dir is empty: give a directory (default %s)", builder.DefaultStateDir)
	case opts.SignKey != "" && opts.CopyTo == "":
		return usageError("--sign-key signs what is copied: add --copy-to STORE_URL")
	}
	if opts.DryRun {
		// Nothing is built, so nothing is copied (BENTO_COPY_TO may be set
		// for the real runs).
		opts.CopyTo, opts.SignKey = "", ""
	}
	if opts.SignKey != "" {
		if _, err := os.Stat(opts.SignKey); err != nil {
			return usageError("--sign-key: %w (make one with: nix key generate-secret --key-name NAME > FILE)", err)
		}
	}
	return nil
}

func errWriter(c *cli.Context) io.Writer {
	if c.App.ErrWriter != nil {
		return c.App.ErrWriter
	}
	return os.Stderr
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func runBuild(c *cli.Context) error {
	opts, err := buildOptions(c)
	if err != nil {
		return err
	}
	_, selected, evalFailed, drvs, err := discoverForBuild(c)
	if err != nil {
		return err
	}
	opts.DrvPaths = drvs
	hosts, skipped, err := deployedToBuild(c, selected)
	if err != nil {
		return err
	}
	results, err := builder.Build(c.Context, nixRunner(c), hosts, opts)
	if err != nil {
		var se *builder.StateDirError
		if errors.As(err, &se) {
			err = withHint(err, "--state-dir or BENTO_STATE_DIR chooses another directory")
		}
		return failed(err)
	}
	if err := printBuildResults(c, results, skipped, opts.DryRun); err != nil {
		return err
	}
	if c.Context.Err() != nil {
		return fmt.Errorf("build interrupted: %w", context.Cause(c.Context))
	}
	if err := buildFailure(results); err != nil {
		return err
	}
	if evalFailed {
		return failed(errors.New("some hosts could not be evaluated and were not built (see above)"))
	}
	return nil
}

// deployedToBuild keeps the selected hosts bento deploys, saying which
// it skips; none is a usage error.
func deployedToBuild(c *cli.Context, selected []fleet.Host) ([]fleet.Host, []deploy.Skipped, error) {
	hosts, skipped := deploy.SplitDeployed(selected)
	for _, s := range skipped {
		fmt.Fprintf(errWriter(c), "bento: skipping %s: %s\n", s.Host, s.Reason)
	}
	if len(hosts) == 0 {
		return nil, skipped, usageError("nothing to build: no selected host is deployed by bento (set services.bento.enable = true on the hosts to build)")
	}
	return hosts, skipped, nil
}

// printBuildResults prints the results as --json asks.
func printBuildResults(c *cli.Context, results []builder.Result, skipped []deploy.Skipped, dryRun bool) error {
	if c.Bool("json") {
		return printBuildJSON(c.App.Writer, results, skipped, dryRun)
	}
	return printBuildSummary(c.App.Writer, results, useColor(c, c.App.Writer))
}

// buildDoc is bento build --json (docs/schema/build.json).
type buildDoc struct {
	OK      bool             `json:"ok"`
	DryRun  bool             `json:"dryRun"`
	Results []builder.Result `json:"results"`
	Skipped []deploy.Skipped `json:"skipped"`
}

func printBuildJSON(w io.Writer, results []builder.Result, skipped []deploy.Skipped, dryRun bool) error {
	out := buildDoc{OK: buildFailure(results) == nil, DryRun: dryRun, Results: results, Skipped: skipped}
	if out.Skipped == nil {
		out.Skipped = []deploy.Skipped{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// logTailLines is how much of a failed host's log the summary shows.
const logTailLines = 12

// printBuildSummary prints a table of every host's result, then, for each
// host that failed, its error, its log file and the last lines of the log,
// then one line that counts.
func printBuildSummary(w io.Writer, results []builder.Result, color bool) error {
	if err := buildTable(results, color).Write(w); err != nil {
		return err
	}
	var bad []string
	counts := map[builder.Status]int{}
	for _, r := range results {
		counts[r.Status]++
		if r.OK() {
			continue
		}
		bad = append(bad, r.Host)
		if r.Status != builder.StatusCancelled {
			printBuildFailure(w, r, color)
		}
	}
	_, err := fmt.Fprintf(w, "\n%s\n", buildCountLine(counts, bad))
	return err
}

// buildTable is the summary's table: a row per host, its result
// coloured when color.
func buildTable(results []builder.Result, color bool) table.Table {
	pathHeader := "OUT PATH"
	// A dry run's hosts are dry-run, failed or cancelled, in any order.
	if slices.ContainsFunc(results, func(r builder.Result) bool { return r.Status == builder.StatusDryRun }) {
		pathHeader = "DRV PATH"
	}
	t := table.Table{Header: []string{"HOST", "RESULT", "DURATION", pathHeader}}
	var colours []string
	for _, r := range results {
		status, colour := buildResultCell(r)
		path := r.OutPath
		if r.Status == builder.StatusDryRun {
			path = r.DrvPath
		}
		t.Rows = append(t.Rows, []string{r.Host, status, progress.FormatDuration(r.Duration), dash(path)})
		colours = append(colours, colour)
	}
	if color {
		t.Color = func(row, col int) string {
			if row >= 0 && col == 1 {
				return colours[row]
			}
			return ""
		}
	}
	return t
}

// buildResultCell is a host's RESULT cell and its colour.
func buildResultCell(r builder.Result) (status, colour string) {
	switch {
	case r.Status == builder.StatusBuilt && r.CopyErr != nil:
		return "built, copy failed", "33"
	case !r.OK():
		return string(r.Status), "31"
	}
	return string(r.Status), "32"
}

// printBuildFailure prints a failed host's error, its log file and the
// last lines of the log.
func printBuildFailure(w io.Writer, r builder.Result, color bool) {
	mark := "✗"
	if color {
		mark = "\x1b[31m" + mark + "\x1b[0m"
	}
	fmt.Fprintf(w, "\n%s %s: %s\n", mark, r.Host, indent(r.Reason(), "  "))
	if r.LogFile != "" {
		fmt.Fprintf(w, "  log: %s\n", r.LogFile)
		for _, l := range builder.LogTail(r.LogFile, logTailLines) {
			fmt.Fprintf(w, "  │ %s\n", l)
		}
	}
}

// buildCountLine is the summary's last line: the hosts per result, and
// those that need attention.
func buildCountLine(counts map[builder.Status]int, bad []string) string {
	var parts []string
	for _, s := range []builder.Status{builder.StatusBuilt, builder.StatusDryRun, builder.StatusFailed, builder.StatusCancelled} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	line := strings.Join(parts, ", ")
	if len(bad) > 0 {
		line += "; needs attention: " + strings.Join(bad, ", ")
	}
	return line
}

// buildFailure is the error a command returns when any host did not
// build (or copy), naming them; nil when all are OK.
func buildFailure(results []builder.Result) error {
	var notBuilt, notCopied, cancelled []string
	for _, r := range results {
		switch {
		case r.OK():
		case r.Status == builder.StatusCancelled:
			cancelled = append(cancelled, r.Host)
		case r.Status == builder.StatusBuilt:
			notCopied = append(notCopied, r.Host)
		default:
			notBuilt = append(notBuilt, r.Host)
		}
	}
	var parts []string
	add := func(hosts []string, what string) {
		if len(hosts) > 0 {
			parts = append(parts, fmt.Sprintf("%d of %d hosts %s: %s", len(hosts), len(results), what, strings.Join(hosts, ", ")))
		}
	}
	add(notBuilt, "failed to build")
	add(notCopied, "were built but not copied")
	add(cancelled, "were cancelled")
	if len(parts) == 0 {
		return nil
	}
	return failed(errors.New(strings.Join(parts, "; ")))
}

func indent(s, prefix string) string {
	return strings.ReplaceAll(s, "\n", "\n"+prefix)
}
