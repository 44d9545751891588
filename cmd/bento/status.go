package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/rollout"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/render"
)

const statusDescription = `One row per host, from <chroot-root>/<host>/manifest.json (what is published),
<host>/reports/status.json (what the host last reported) and the server's build
records (what bento build made). A state is decided from the versions these name,
never from file times:

  up-to-date          applied the published version; runs what the server built
  pending             a newer version is published than the host has applied
  failing             the host tried the published version and failed
  rolled-back         the host switched to it and rolled back
  drift               applied it, but runs another system than the server built
  reboot-required     applied; a new kernel, initrd or modules wait for a reboot
  stale               no report for longer than --stale-after
  never-seen          published, but the host never reported
  unpublished         bento deploys the host, nothing is published yet
  unreadable          its report or manifest cannot be read (the reason is shown),
                      or its reports/ is over --reports-max-bytes/--reports-max-files
                      ("reports over limit": its oldest logs are removed)
  removed-from-flake  a chroot is left for a host the flake no longer has
  disabled            services.bento.enable = false
  not-managed         the host does not import the bento module

The flake is evaluated (--flake, default .) to know disabled, unmanaged and
removed hosts and each host's poll interval; without a flake at hand, or with
--no-eval, status shows what the chroot root holds.

Exit status: 0 every host up to date (or not deployed by design); 3 some host
pending, reboot-required or unpublished; 4 some host stale or never seen; 5 some
host failing, rolled back, drifting or unreadable, or reporting secrets it could
not install (the worst wins); 1 status itself failed (no chroot root); 2 bad
flags or arguments. See docs/status.md.`

func statusCommand() *cli.Command {
	prom := &promTarget{}
	return &cli.Command{
		Name:        "status",
		Usage:       "show, for every host, whether it runs what was published",
		ArgsUsage:   "[HOST|GLOB|@TAG]...",
		Description: statusDescription,
		Flags: append(append(fleetFlags(),
			chrootRootFlag(),
			statusStateDirFlag(),
			&cli.BoolFlag{Name: "no-eval", Usage: "do not evaluate the flake: show what the chroot root holds"},
			&cli.BoolFlag{Name: "json", Usage: "print the documented JSON document (docs/status.md)"},
			&cli.GenericFlag{Name: "prometheus", Value: prom, Usage: "print Prometheus metrics; --prometheus=FILE writes them to FILE atomically (node_exporter's textfile collector) and prints the table as usual"},
			&cli.BoolFlag{Name: "watch", Aliases: []string{"w"}, Usage: "redraw whenever a report or manifest changes, and every --every; Ctrl-C quits"},
			&cli.DurationFlag{Name: "every", Value: 2 * time.Second, Usage: "with --watch: redraw at least this often, so ages stay true"},
			&cli.DurationFlag{Name: "stale-after", Usage: "a host silent for longer is stale (default: 3 of its poll intervals, else 45m)"},
			&cli.StringFlag{Name: "sort", Value: "state", Usage: "row order: state (most urgent first), name, seen (longest silent first) or published (latest first)"},
			&cli.BoolFlag{Name: "wide", Usage: "never cut messages to the terminal's width"},
		), reportsLimitFlags()...),
		Action: func(c *cli.Context) error { return runStatus(c, prom) },
	}
}

// promTarget is --prometheus[=FILE]: a flag that may stand alone (the
// standard flag package treats it as a boolean then) or take a file.
type promTarget struct {
	set  bool
	file string
}

func (p *promTarget) String() string { return "" }

// toStdout: --prometheus without a file prints the metrics.
func (p *promTarget) toStdout() bool { return p.set && p.file == "" }

// IsBoolFlag lets "--prometheus" go without a value.
func (p *promTarget) IsBoolFlag() bool { return true }

func (p *promTarget) Set(v string) error {
	p.set = true
	if v != "true" {
		p.file = v
	}
	if v == "" || v == "false" {
		p.set, p.file = false, ""
	}
	return nil
}

// reportsLimitFlags are the per-host limits on reports/ of every command
// that reads reports (status, logs, deploy). The server module sets their
// environment variables from services.bento-server.reports.
func reportsLimitFlags() []cli.Flag {
	return []cli.Flag{
		&cli.Int64Flag{Name: "reports-max-bytes", Value: status.DefaultReportsMaxBytes, Usage: "a host may keep at most this many bytes in its reports/: beyond, its oldest logs are removed and it shows as unreadable", EnvVars: []string{"BENTO_REPORTS_MAX_BYTES"}},
		&cli.IntFlag{Name: "reports-max-files", Value: status.DefaultReportsMaxFiles, Usage: "a host may keep at most this many files in its reports/: beyond, its oldest logs are removed and it shows as unreadable", EnvVars: []string{"BENTO_REPORTS_MAX_FILES"}},
	}
}

// reportLimits reads the flags of reportsLimitFlags.
func reportLimits(c *cli.Context) (status.ReportLimits, error) {
	l := status.ReportLimits{MaxBytes: c.Int64("reports-max-bytes"), MaxFiles: c.Int("reports-max-files")}
	if l.MaxBytes <= 0 || l.MaxFiles <= 0 {
		return l, usageError("--reports-max-bytes and --reports-max-files must be positive (got %d and %d)", l.MaxBytes, l.MaxFiles)
	}
	return l, nil
}

func statusStateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Value: builder.DefaultStateDir, Usage: "where bento build keeps its build records", EnvVars: []string{"BENTO_STATE_DIR"}}
}

func runStatus(c *cli.Context, prom *promTarget) error {
	if err := checkStatusFlags(c, prom); err != nil {
		return err
	}
	opts, err := statusOptions(c)
	if err != nil {
		return err
	}
	if opts.History != nil {
		defer opts.History.Close()
	}
	w := c.App.Writer
	tty := isTerminal(w)
	table := statusTable(c, w, tty)
	if c.Bool("watch") {
		sc := render.Screen{Out: w, TTY: tty, Table: table, Every: c.Duration("every"), Clock: time.Now, PromFile: prom.file,
			Header: func(*status.Snapshot) string { return rolloutHeader(opts.Root) }}
		if f, ok := w.(*os.File); ok && table.Width > 0 {
			// A resized terminal gets a table of its new width at once.
			resize, stop := resizes(c.Context)
			defer stop()
			sc.Resize, sc.Width = resize, func() int {
				if width, _, err := term.GetSize(int(f.Fd())); err == nil {
					return width
				}
				return table.Width
			}
		}
		err := render.Watch(c.Context, opts, sc)
		var ue *status.UsageError
		if errors.As(err, &ue) {
			return usageError("%w", err)
		}
		if err != nil {
			return failed(err)
		}
		return nil
	}
	return printStatus(c, opts, prom, table)
}

// statusOptions reads the flags that say what status collects, and the
// server's build records and fleet.
func statusOptions(c *cli.Context) (status.Options, error) {
	root := c.String("chroot-root")
	if root == "" {
		return status.Options{}, usageError("--chroot-root is empty: give the directory holding the hosts' chroots (default %s)", DefaultChrootRoot)
	}
	limits, err := reportLimits(c)
	if err != nil {
		return status.Options{}, err
	}
	opts := status.Options{
		Root:         root,
		Select:       c.Args().Slice(),
		StaleAfter:   c.Duration("stale-after"),
		Sort:         c.String("sort"),
		ReportLimits: limits,
	}
	if err := status.SortRows(nil, opts.Sort); err != nil {
		return status.Options{}, usageError("%w", err)
	}
	opts.History, opts.HistoryWarn = statusHistory(c, root)
	// Asked once per run: a reported system must be right under it.
	if dir, err := status.StoreDir(c.Context, nixRunner(c)); err == nil {
		opts.StoreDir = dir
	} else {
		fmt.Fprintf(c.App.ErrWriter, "bento: warning: %v (reported systems are checked for their shape only)\n", err)
	}
	builds, err := statusBuilds(c.String("state-dir"))
	if err != nil {
		// Status without the SYSTEM column for unpublished builds beats no status.
		fmt.Fprintf(c.App.ErrWriter, "bento: warning: %v (status goes on without the server's build records)\n", err)
	}
	opts.Builds = builds
	if !c.Bool("no-eval") {
		f, evalErrs, err := statusFleet(c)
		if err != nil {
			return status.Options{}, err
		}
		opts.Fleet, opts.EvalErrors = f, evalErrs
	}
	return opts, nil
}

// resizes delivers one value per SIGWINCH (coalesced) until stop.
func resizes(ctx context.Context) (<-chan struct{}, func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGWINCH)
	out := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-sig:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, func() { signal.Stop(sig); close(done) }
}

// statusTable sizes the table to the terminal (unless --wide).
func statusTable(c *cli.Context, w io.Writer, tty bool) render.TableOptions {
	table := render.TableOptions{Color: useColor(c, w)}
	if tty && !c.Bool("wide") {
		if f, ok := w.(*os.File); ok {
			if width, _, err := term.GetSize(int(f.Fd())); err == nil {
				table.Width = width
			}
		}
	}
	return table
}

// printStatus collects the status once and prints it (table, --json or
// --prometheus), exiting with the fleet's status.
func printStatus(c *cli.Context, opts status.Options, prom *promTarget, table render.TableOptions) error {
	opts.Now = time.Now()
	s, err := collectStatus(c, opts)
	if err != nil {
		return err
	}
	if opts.History == nil {
		// Not opened (a read-only state directory): its size all the same.
		s.HistoryBytes, _ = history.FileSize(history.Path(opts.Root))
	}
	summary := statusRollout(c, opts.Root, s)
	if prom.file != "" {
		if err := atomicfile.Write(prom.file, 0o644, func(w io.Writer) error { return render.Prometheus(w, s) }); err != nil {
			return failed(err)
		}
	}
	if err := writeStatus(c.App.Writer, c.Bool("json"), prom, s, summary, table); err != nil {
		return failed(err)
	}
	if s.ExitCode != status.ExitUpToDate {
		// The table (or document) already says why.
		return &exitError{code: s.ExitCode, err: errors.New("")}
	}
	return nil
}

// collectStatus collects the status, its error as the exit it gives.
func collectStatus(c *cli.Context, opts status.Options) (*status.Snapshot, error) {
	s, err := status.Collect(c.Context, opts)
	if err != nil {
		var ue *status.UsageError
		switch {
		case errors.As(err, &ue):
			return nil, usageError("%w", err)
		case c.Context.Err() != nil:
			// Ctrl-C: exit 130, like every bento command.
			return nil, fmt.Errorf("status interrupted: %w", c.Context.Err())
		}
		return nil, failed(err)
	}
	return s, nil
}

// writeStatus prints the status as --json, as --prometheus (to standard
// output) or as a table after the rollout's summary.
func writeStatus(w io.Writer, asJSON bool, prom *promTarget, s *status.Snapshot, summary string, table render.TableOptions) error {
	switch {
	case asJSON:
		return render.JSON(w, s)
	case prom.toStdout():
		return render.Prometheus(w, s)
	}
	if summary != "" {
		fmt.Fprintf(&termsafe.Writer{W: w}, "%s\n\n", summary)
	}
	return render.Table(w, s, table)
}

// checkStatusFlags refuses arguments and flags that do not go together.
func checkStatusFlags(c *cli.Context, prom *promTarget) error {
	if err := checkStatusArgs(c, prom); err != nil {
		return err
	}
	switch {
	case c.Bool("json") && prom.toStdout():
		return usageError("--json and --prometheus both print to standard output: choose one (or --prometheus=FILE)")
	case c.Bool("watch") && c.Bool("json"):
		return usageError("--watch redraws a table: it does not mix with --json")
	case c.Bool("watch") && prom.toStdout():
		return usageError("--watch with --prometheus needs a file: --prometheus=FILE rewrites it on every redraw")
	case c.Duration("stale-after") < 0:
		return usageError("--stale-after must be positive")
	case c.Duration("every") <= 0:
		return usageError("--every must be positive")
	}
	return nil
}

// checkStatusArgs refuses a flag after the host names, and a file name
// --prometheus FILE (without =) would take for a host.
func checkStatusArgs(c *cli.Context, prom *promTarget) error {
	for _, a := range c.Args().Slice() {
		if strings.HasPrefix(a, "-") {
			return usageError("%s comes after the host names: put flags first (bento status %s HOST…)", a, a)
		}
		if prom.toStdout() && (strings.Contains(a, "/") || strings.HasSuffix(a, ".prom")) {
			return usageError("%q is not a host: write --prometheus=%s (with =) to write the metrics to a file", a, a)
		}
	}
	return nil
}

// statusFleet evaluates the flake when one is at hand. Hosts that fail to
// evaluate are still shown, from their chroots, with the error.
func statusFleet(c *cli.Context) (*fleet.Fleet, map[string]error, error) {
	ref, set := flakeRef(c)
	if !set && !fleetHere(ref) {
		abs, _ := filepath.Abs(ref)
		fmt.Fprintf(c.App.ErrWriter, "bento: no fleet flake in %s: showing what %s holds (--flake names the fleet; --no-eval skips this check)\n", abs, c.String("chroot-root"))
		return nil, nil, nil
	}
	if c.Int("eval-jobs") < 1 {
		return nil, nil, usageError("--eval-jobs must be at least 1")
	}
	evalOpts, err := evalOptions(c)
	if err != nil {
		return nil, nil, err
	}
	evalOpts.Ref, evalOpts.KeepGoing = ref, true
	f, err := eval.Discover(c.Context, nixRunner(c), evalOpts)
	var herrs eval.HostErrors
	switch {
	case err == nil:
		return f, nil, nil
	case f != nil && errors.As(err, &herrs):
		evalErrs := map[string]error{}
		for _, he := range herrs {
			evalErrs[he.Host] = he.Err
		}
		return f, evalErrs, nil
	}
	return nil, nil, failed(withHint(err, "--no-eval shows what the chroot root holds without evaluating the flake"))
}

// fleetHere tells whether dir holds a fleet: a flake or classic hosts.
func fleetHere(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, "flake.nix")); err == nil {
		return true
	}
	m, _ := filepath.Glob(filepath.Join(dir, "hosts", "*", "configuration.nix"))
	return len(m) > 0
}

// statusBuilds reads the server's build records.
func statusBuilds(stateDir string) (map[string]status.Build, error) {
	recs, err := builder.LastBuilds(stateDir)
	if err != nil {
		return nil, err
	}
	out := make(map[string]status.Build, len(recs))
	for h, r := range recs {
		out[h] = status.Build{OutPath: r.OutPath, DrvPath: r.DrvPath, BuiltAt: r.BuiltAt, Previous: r.Previous}
	}
	return out, nil
}

// statusRollout puts the recorded rollout, if any, into the snapshot and
// returns its line for above the table ("" for none).
func statusRollout(c *cli.Context, root string, s *status.Snapshot) string {
	st, err := rollout.Load(root)
	if err != nil {
		fmt.Fprintf(c.App.ErrWriter, "bento: warning: %v\n", err)
		return ""
	}
	if st == nil {
		return ""
	}
	v := st.View(false)
	s.Rollout = &v
	return st.Summary()
}

// rolloutHeader is the rollout's line above bento status --watch's table
// (its error in place, not on the error stream the redraw overwrites).
func rolloutHeader(root string) string {
	st, err := rollout.Load(root)
	switch {
	case err != nil:
		return "warning: " + err.Error()
	case st == nil:
		return ""
	}
	return st.Summary()
}
