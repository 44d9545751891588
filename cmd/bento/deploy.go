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
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/rollout"
	"github.com/bento-nix/bento/status"
)

// DefaultChrootRoot is where the SFTP chroots live on a server.
const DefaultChrootRoot = "/home/chroot"

// chrootRootFlag is the flag of every command that reads or writes the
// chroots (deploy, status).
func chrootRootFlag() cli.Flag {
	return &cli.StringFlag{Name: "chroot-root", Value: DefaultChrootRoot, Usage: "the directory holding one SFTP chroot per host", EnvVars: []string{"BENTO_CHROOT_ROOT"}}
}

func deployCommand() *cli.Command {
	return &cli.Command{
		Name:      "deploy",
		Usage:     "build every deployed host and publish its flake into its SFTP chroot",
		ArgsUsage: "[HOST|GLOB|@TAG]...",
		Description: "Discovers the fleet, builds the selected hosts (as bento build), then publishes each host\n" +
			"whose build succeeded into <chroot-root>/<host>/: manifest.json names the version (a content\n" +
			"hash), the expected system and every file of the flake as Nix sees it, whose content is in\n" +
			"objects/ (each distinct content written once for the fleet, then hard-linked). Unchanged hosts\n" +
			"are not written at all; manifest.json is replaced atomically, so a host never sees half a\n" +
			"publication, and an object stays for --retention after the last manifest naming it was\n" +
			"replaced. A fetch-mode host receives no file of the flake. A host whose build failed keeps\n" +
			"its previous publication (unless --force). Chroots of hosts no longer in the fleet are listed;\n" +
			"--prune removes them. One deploy at a time per chroot root. A host whose services.bento.user\n" +
			"is root, another deployed host's, or (when --host-group exists) outside that group is refused.\n" +
			"Exits 1 when any host failed.",
		Flags: append(append(append(append(append(fleetFlags(), buildFlags()...), cacheFlags()...), publicationFlags()...),
			chrootRootFlag(),
			secretsDirFlag(),
			&cli.BoolFlag{Name: "no-build", Usage: "publish without building (the manifests then name no expected system)"},
			&cli.BoolFlag{Name: "force", Usage: "publish hosts whose build failed, too"},
			&cli.DurationFlag{Name: "lock-wait", Usage: "wait this long for another deploy to finish; 0 (the default): at once, as in every command"},
			&cli.StringFlag{Name: "retention", Value: "1h", Usage: "keep each published file this long after the last manifest naming it was replaced, for hosts still downloading it (" + timespan.Syntax + ")"},
			historyRetentionFlag(),
			&cli.BoolFlag{Name: "prune", Usage: "remove the chroots of hosts that are no longer in the fleet (keeping their reports/)"},
			&cli.BoolFlag{Name: "prune-reports", Usage: "with --prune, remove their reports/ too"},
			&cli.BoolFlag{Name: "no-user-check", Usage: "do not require each host's SFTP user to exist (reports/ then stays owned by the deploying user)"},
			&cli.BoolFlag{Name: "json", Usage: "print the results as JSON for scripts"},
			hostGroupFlag(),
			&cli.BoolFlag{Name: "rollout", Usage: "publish in waves: = bento rollout start (see bento rollout --help)"},
			supersedeFlag(),
		), append(reportsLimitFlags(), rolloutPolicyFlags()...)...),
		Action: runDeploy,
	}
}

func runDeploy(c *cli.Context) error {
	if c.Bool("rollout") {
		return runRolloutStart(c)
	}
	opts, err := deployOptions(c)
	if err != nil {
		return err
	}
	report, err := deploy.Run(c.Context, opts)
	if err != nil {
		return deployError(err)
	}
	return printDeployReport(c, report)
}

// deployError gives a deploy that stopped before publishing its exit
// status: 2 for the options and the server's setup, 1 for a failure, the
// context's for an interruption.
func deployError(err error) error {
	var ee *exitError
	var ce *deploy.ConfigError
	var se *builder.StateDirError
	switch {
	case errors.As(err, &ee):
		// discover's, classified already.
		return err
	case errors.As(err, &ce):
		return usageError("%w", ce.Err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.As(err, &se):
		return failed(withHint(err, "--state-dir or BENTO_STATE_DIR chooses another directory"))
	}
	return failed(err)
}

// deployOptions reads deploy's flags and prints the warnings about
// running as a user other than root.
func deployOptions(c *cli.Context) (deploy.Options, error) {
	if err := checkDeployFlags(c); err != nil {
		return deploy.Options{}, err
	}
	limits, err := reportLimits(c)
	if err != nil {
		return deploy.Options{}, err
	}
	retention, err := positiveSpan(c, "retention", ": it is how long hosts may take to download a publication")
	if err != nil {
		return deploy.Options{}, err
	}
	historyKeep, err := historyRetention(c)
	if err != nil {
		return deploy.Options{}, err
	}
	opts := deploy.Options{
		HistoryRetention: historyKeep,
		Root:             c.String("chroot-root"),
		HostGroup:        c.String("host-group"),
		DryRun:           c.Bool("dry-run"),
		Force:            c.Bool("force"),
		LockWait:         c.Duration("lock-wait"),
		Retention:        retention,
		Nix:              nixRunner(c),
		ReportLimits:     &limits,
		Prune:            c.Bool("prune"),
		PruneReports:     c.Bool("prune-reports"),
		Logger:           logger(c),
	}
	if err := setDeployDiscover(c, &opts); err != nil {
		return opts, err
	}
	if !c.Bool("no-cache") {
		opts.Cache = &deploy.CacheOptions{Key: c.String("cache-key"), KeyRequired: c.IsSet("cache-key"), Pool: c.String("cache-pool")}
	}
	if opts.PublicationKey, opts.NextPublicationKey, err = publicationKeys(c); err != nil {
		return opts, err
	}
	ew := errWriter(c)
	setDeployUsers(c, ew, &opts)
	opts.Print = func(line string) { fmt.Fprintln(ew, "bento:", line) }
	// Before anything evaluates the fleet: a secrets directory Nix would
	// copy into its store is refused.
	if opts.SecretsDir, err = guardSecrets(c); err != nil {
		return opts, err
	}
	lintBeforeDeploy(c, &opts)
	// Refused while a rollout holds the fleet (rollout start replaces
	// it); a dry run publishes nothing, so it may look.
	if !opts.DryRun {
		opts.Hooks.Locked = rollout.Guard(c.Bool("supersede"), nil)
	}
	return opts, nil
}

// checkDeployFlags refuses deploy flags that make no sense together.
func checkDeployFlags(c *cli.Context) error {
	if c.Bool("prune-reports") && !c.Bool("prune") {
		return usageError("--prune-reports only adds to --prune: pass both")
	}
	if c.Duration("lock-wait") < 0 {
		return usageError("--lock-wait must not be negative")
	}
	return nil
}

// setDeployDiscover sets how deploy discovers the fleet, and reads the
// build's options unless --no-build.
func setDeployDiscover(c *cli.Context, opts *deploy.Options) error {
	opts.Discover = func(context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
		return discover(c)
	}
	if !c.Bool("no-build") {
		bopts, err := buildOptions(c)
		if err != nil {
			return err
		}
		opts.Build = &bopts
		opts.Discover = func(context.Context) (f *fleet.Fleet, selected []fleet.Host, evalFailed bool, err error) {
			// The build reuses the derivations discovery instantiated.
			f, selected, evalFailed, bopts.DrvPaths, err = discoverForBuild(c)
			return f, selected, evalFailed, err
		}
	}
	// Shell completion offers the hosts discovery found (hostcache.go).
	inner := opts.Discover
	opts.Discover = func(ctx context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
		f, selected, evalFailed, err := inner(ctx)
		if err == nil {
			writeHostCache(c, f)
		}
		return f, selected, evalFailed, err
	}
	return nil
}

// setDeployUsers decides whether deploy checks the hosts' SFTP users,
// warning when it does not.
func setDeployUsers(c *cli.Context, ew io.Writer, opts *deploy.Options) {
	asRoot := os.Geteuid() == 0
	opts.Users = asRoot && !c.Bool("no-user-check")
	switch {
	case !asRoot:
		fmt.Fprintf(ew, "bento: warning: not running as root: the chroots and their reports/ belong to you (uid %d) and no SFTP user is checked; fine for a local try-out, but sshd serves only root-owned chroots: deploy as root in production\n", os.Geteuid())
	case !opts.Users:
		fmt.Fprintln(ew, "bento: warning: --no-user-check: each host's reports/ stays owned by root, so hosts cannot upload reports until you deploy again without it")
	}
}

// printDeployReport renders the report (text or --json) and gives the
// exit status.
func printDeployReport(c *cli.Context, report *deploy.Report) error {
	var err error
	if c.Bool("json") {
		err = printDeployJSON(c.App.Writer, *report)
	} else {
		if failedBuilds := onlyFailed(report.Builds); len(failedBuilds) > 0 {
			// The build's own summary shows each failure's log tail.
			if err := printBuildSummary(c.App.Writer, failedBuilds, useColor(c, c.App.Writer)); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer)
		}
		// The root's warnings were printed before the build; JSON has them all.
		text := *report
		text.Warnings = report.LateWarnings()
		err = printDeploy(c.App.Writer, errWriter(c), text, pruneMode{c.Bool("prune"), c.Bool("prune-reports")}, useColor(c, c.App.Writer))
	}
	if err != nil {
		return err
	}
	if err := report.Failure(); err != nil {
		return failed(err)
	}
	return nil
}

func printDeployJSON(w io.Writer, r deploy.Report) error {
	for _, s := range []*[]string{&r.Pruned, &r.Kept, &r.Warnings, &r.Notes} {
		if *s == nil {
			*s = []string{}
		}
	}
	if r.Skipped == nil {
		r.Skipped = []deploy.Skipped{}
	}
	if r.Orphans == nil {
		r.Orphans = []publish.Orphan{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func onlyFailed(rs []builder.Result) []builder.Result {
	var out []builder.Result
	for _, r := range rs {
		if !r.OK() && r.Status != builder.StatusBuilt {
			out = append(out, r)
		}
	}
	return out
}

// printDeploy prints one line per host, the orphans, then a summary line.
// Notes and warnings go to the error stream.
// pruneMode is what --prune and --prune-reports asked for.
type pruneMode struct{ prune, reports bool }

func printDeploy(w, ew io.Writer, r deploy.Report, prune pruneMode, color bool) error {
	paint := func(colour, s string) string {
		if !color || colour == "" {
			return s
		}
		return colour + s + "\x1b[0m"
	}
	for _, n := range r.Notes {
		fmt.Fprintln(ew, "bento: note:", n)
	}
	width := 0
	for _, h := range r.Hosts {
		width = max(width, utf8.RuneCountInString(h.Host))
	}
	counts := map[string]int{}
	var bad []string
	for _, h := range r.Hosts {
		text, colour, key := describe(h, r.DryRun)
		counts[key]++
		if h.NeedsAttention() {
			bad = append(bad, h.Host)
		}
		if _, err := fmt.Fprintf(w, "%-*s  %s\n", width, h.Host, paint(colour, text)); err != nil {
			return err
		}
	}
	printOrphans(w, r, prune)
	for _, e := range r.PruneErrors {
		fmt.Fprintln(ew, "bento: prune:", e)
	}
	for _, warn := range r.Warnings {
		fmt.Fprintln(ew, "bento: warning:", warn)
	}
	line := deploySummary(r, counts, bad)
	_, err := fmt.Fprintf(w, "\n%s\n", line)
	return err
}

// printOrphans lists the chroots of hosts no longer in the fleet.
func printOrphans(w io.Writer, r deploy.Report, mode pruneMode) {
	if len(r.Orphans) == 0 {
		return
	}
	fmt.Fprintln(w)
	for _, o := range r.Orphans {
		state := "no longer in the fleet"
		if o.ReportsOnly {
			state = "no longer in the fleet, only its reports/ are left"
		}
		fmt.Fprintf(w, "%s: %s%s\n", o.Path, state, orphanVerb(o, r, mode))
	}
}

// orphanVerb is what deploy did (or would do, or how to make it do
// something) with an orphan's chroot.
func orphanVerb(o publish.Orphan, r deploy.Report, mode pruneMode) string {
	switch {
	case slices.Contains(r.Kept, o.Host):
		return fmt.Sprintf(" — kept reports/ of %s; --prune-reports removes it too", o.Host)
	case slices.Contains(r.Pruned, o.Host):
		if !mode.reports {
			return " — pruned, kept its reports/ (--prune-reports removes them too)"
		}
		return " — pruned"
	case mode.prune && r.DryRun:
		if o.ReportsOnly && !mode.reports {
			return fmt.Sprintf(" — would keep reports/ of %s; --prune-reports removes it too", o.Host)
		}
		return " — would be pruned"
	case !mode.prune:
		if o.ReportsOnly {
			return " (--prune --prune-reports removes it)"
		}
		return " (--prune removes it)"
	}
	return ""
}

// deploySummary is the last line: how many hosts ended how, and which
// need attention.
func deploySummary(r deploy.Report, counts map[string]int, bad []string) string {
	var parts []string
	for _, k := range []string{"published", "would publish", "updated", "would update", "unchanged", "failed"} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
		}
	}
	line := fmt.Sprintf("%d hosts in %s: %s", len(r.Hosts), r.Root, strings.Join(parts, ", "))
	if len(bad) > 0 {
		line += "; needs attention: " + strings.Join(bad, ", ")
	}
	if r.DryRun {
		line += " (dry run: nothing written)"
	}
	return line
}

// describe is a host's line, its colour and the word it counts under.
func describe(h deploy.Row, dryRun bool) (text, colour, key string) {
	forced := forcedNote(h)
	switch h.Status {
	case publish.StatusFailed:
		return "failed: " + h.ErrorDetail(), "\x1b[31m", "failed"
	case publish.StatusUnchanged:
		return "unchanged " + status.ShortVersion(h.Version) + forced, "", "unchanged"
	case publish.StatusUpdated:
		verb, key := "updated", "updated"
		if dryRun {
			verb, key = "would update", "would update"
		}
		return fmt.Sprintf("%s %s: same files, manifest only (expected system %s)%s", verb, status.ShortVersion(h.Version), dash(h.ExpectedToplevel), forced), "\x1b[32m", key
	}
	verb, key := "published", "published"
	if dryRun {
		verb, key = "would publish", "would publish"
	}
	colour = "\x1b[32m"
	if h.BuildFailed {
		colour = "\x1b[33m"
	}
	return fmt.Sprintf("%s %s (%s)%s", verb, status.ShortVersion(h.Version), publishedDetail(h, dryRun), forced), colour, key
}

// forcedNote is what a host's line adds when it went live despite a
// failed build or copy.
func forcedNote(h deploy.Row) string {
	forced := ""
	if h.BuildFailed {
		forced = " — its build failed, published anyway (--force)"
	}
	if h.CopyError != "" {
		forced = " — not copied to the cache: " + h.CopyError
	}
	return forced
}

// publishedDetail is what publishing a host's version wrote (or would
// write).
func publishedDetail(h deploy.Row, dryRun bool) string {
	detail := fmt.Sprintf("%d copied, %d linked, %d shared, %s written", h.Copied, h.Linked, h.Shared, bytesize.Format(h.BytesWritten))
	if dryRun {
		detail = fmt.Sprintf("%d to copy, %d to link, %d to share", h.Copied, h.Linked, h.Shared)
	}
	if h.Copied+h.Linked+h.Shared == 0 {
		detail = "the kept previous version goes live again"
	}
	if h.Previous != "" {
		detail += "; was " + status.ShortVersion(h.Previous)
	}
	return detail
}
