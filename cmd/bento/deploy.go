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
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/publish"
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
		Flags: append(append(append(append(fleetFlags(), buildFlags()...), cacheFlags()...),
			chrootRootFlag(),
			secretsDirFlag(),
			&cli.BoolFlag{Name: "no-build", Usage: "publish without building (the manifests then name no expected system)"},
			&cli.BoolFlag{Name: "force", Usage: "publish hosts whose build failed, too"},
			&cli.DurationFlag{Name: "lock-wait", Usage: "wait this long for another deploy to finish (0: fail at once)"},
			&cli.StringFlag{Name: "retention", Value: "1h", Usage: "keep each published file this long after the last manifest naming it was replaced, for hosts still downloading it (" + timespan.Syntax + ")"},
			&cli.BoolFlag{Name: "prune", Usage: "remove the chroots of hosts that are no longer in the fleet (keeping their reports/)"},
			&cli.BoolFlag{Name: "prune-reports", Usage: "with --prune, remove their reports/ too"},
			&cli.BoolFlag{Name: "no-user-check", Usage: "do not require each host's SFTP user to exist (reports/ then stays owned by the deploying user)"},
			&cli.BoolFlag{Name: "json", Usage: "print the results as JSON for scripts"},
			hostGroupFlag(),
		), reportsLimitFlags()...),
		Action: runDeploy,
	}
}

func runDeploy(c *cli.Context) error {
	if c.Bool("prune-reports") && !c.Bool("prune") {
		return usageError("--prune-reports only adds to --prune: pass both")
	}
	if c.Duration("lock-wait") < 0 {
		return usageError("--lock-wait must not be negative")
	}
	limits, err := reportLimits(c)
	if err != nil {
		return err
	}
	retention, err := timespan.Parse(c.String("retention"))
	if err != nil {
		return usageError("--retention: %w", err)
	}
	if retention <= 0 {
		return usageError("--retention must be positive (got %s): it is how long hosts may take to download a publication", c.String("retention"))
	}
	dryRun, noBuild := c.Bool("dry-run"), c.Bool("no-build")
	var bopts builder.Options
	if !noBuild {
		var err error
		if bopts, err = buildOptions(c); err != nil {
			return err
		}
	}
	ew := errWriter(c)
	asRoot := os.Geteuid() == 0
	users := asRoot && !c.Bool("no-user-check")
	switch {
	case !asRoot:
		fmt.Fprintf(ew, "bento: warning: not running as root: the chroots and their reports/ belong to you (uid %d) and no SFTP user is checked; fine for a local try-out, but sshd serves only root-owned chroots: deploy as root in production\n", os.Geteuid())
	case !users:
		fmt.Fprintln(ew, "bento: warning: --no-user-check: each host's reports/ stays owned by root, so hosts cannot upload reports until you deploy again without it")
	}

	// Before anything evaluates the fleet: a secrets directory Nix would
	// copy into its store is refused.
	secretsDir, err := guardSecrets(c)
	if err != nil {
		return err
	}
	// Lock and check the chroot root before evaluating and building: a
	// second deploy or an unusable root fails in a second, not after the
	// builds.
	pub, err := publish.Open(c.Context, publish.Options{
		Root:      c.String("chroot-root"),
		Users:     users,
		DryRun:    dryRun,
		LockWait:  c.Duration("lock-wait"),
		Retention: retention,
		Logger:    logger(c),
	})
	if err != nil {
		switch {
		case errors.Is(err, context.Canceled):
			return err
		case errors.Is(err, publish.ErrLocked):
			return failed(err)
		}
		return usageError("%w", err)
	}
	defer pub.Close()
	for _, w := range pub.Warnings() {
		fmt.Fprintln(ew, "bento: warning:", w)
	}
	pool, err := cachePool(c, pub.Root())
	if err != nil {
		return err
	}

	var f *fleet.Fleet
	var selected []fleet.Host
	var evalFailed bool
	if noBuild {
		f, selected, evalFailed, err = discover(c)
	} else {
		// The build reuses the derivations discovery instantiated.
		f, selected, evalFailed, bopts.DrvPaths, err = discoverForBuild(c)
	}
	if err != nil {
		return err
	}
	hosts, skipped := splitDeployed(selected)
	for _, s := range skipped {
		fmt.Fprintf(ew, "bento: skipping %s: %s\n", s.Host, s.Reason)
	}
	if len(hosts) == 0 {
		return usageError("nothing to deploy: no selected host is deployed by bento (set services.bento.enable = true on the hosts to deploy)")
	}
	// Before building: a host whose SFTP user would reach more than its
	// own chroot is refused (its previous publication stays), the others
	// go on. Without user checks, only the names are judged.
	var accounts accountDB = systemAccounts{}
	group := c.String("host-group")
	if !users {
		accounts, group = noAccounts{}, ""
	}
	bad, err := checkUsers(f.Hosts, hosts, group, accounts)
	if err != nil {
		return failed(err)
	}
	var refused []deployRow
	for _, e := range sortedErrors(bad) {
		fmt.Fprintln(ew, "bento:", e)
	}
	hosts = slices.DeleteFunc(hosts, func(h fleet.Host) bool {
		if err := bad[h.Name]; err != nil {
			refused = append(refused, deployRow{Result: publish.Result{Host: h.Name, Status: publish.StatusFailed, Err: err}})
			return true
		}
		return false
	})
	if len(hosts) == 0 {
		return failed(fmt.Errorf("nothing deployed: every selected host's services.bento.user is refused (see above)"))
	}

	builds := map[string]builder.Result{}
	var buildResults []builder.Result
	if !noBuild {
		buildResults, err = builder.Build(c.Context, nixRunner(c), hosts, bopts)
		if err != nil {
			if strings.Contains(err.Error(), "state directory") {
				err = withHint(err, "--state-dir or BENTO_STATE_DIR chooses another directory")
			}
			return failed(err)
		}
		for _, r := range buildResults {
			builds[r.Host] = r
		}
	}
	if c.Context.Err() != nil {
		return fmt.Errorf("deploy interrupted before publishing; nothing was published: %w", c.Context.Err())
	}

	rows, targets, targetRow, secretWarnings := planTargets(hosts, builds, f.Dir, secretsDir, users, c.Bool("force"))
	targets, targetRow = fillCaches(c, pool, pub.Root(), targets, targetRow, rows)
	for j, r := range pub.Publish(c.Context, targets) {
		rows[targetRow[j]].Result = r
	}
	rows = append(rows, refused...)

	report := deployReport{Root: pub.Root(), DryRun: dryRun, Hosts: rows, Skipped: skipped, Warnings: secretWarnings}
	report.Warnings = append(report.Warnings, enforceReportLimits(pub.Root(), hosts, limits, dryRun)...)
	report.Notes = hostNotes(rows)
	if evalFailed {
		// The list of hosts is incomplete: a host that did not evaluate
		// would look orphaned.
		report.Warnings = append(report.Warnings, "some hosts did not evaluate: chroots of hosts no longer in the fleet are neither listed nor pruned this time")
	} else {
		report.Orphans, report.Pruned, report.PruneErrors, err = orphans(pub, f.Hosts, c.Bool("prune") && !dryRun, c.Bool("prune-reports"))
		if err != nil {
			report.Warnings = append(report.Warnings, err.Error())
		}
	}
	// After the orphans went: their pool entries are free now, too.
	report.Warnings = append(report.Warnings, pruneCache(c, pool)...)
	report.OK = deployFailure(rows) == nil && !evalFailed && len(report.PruneErrors) == 0
	// The root's warnings were printed before the build; JSON has them all.
	lateWarnings := report.Warnings
	report.Warnings = append(append([]string(nil), pub.Warnings()...), lateWarnings...)

	if c.Bool("json") {
		err = printDeployJSON(c.App.Writer, report)
	} else {
		if failedBuilds := onlyFailed(buildResults); len(failedBuilds) > 0 {
			// The build's own summary shows each failure's log tail.
			if err := printBuildSummary(c.App.Writer, failedBuilds, useColor(c, c.App.Writer)); err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer)
		}
		text := report
		text.Warnings = lateWarnings
		err = printDeploy(c.App.Writer, ew, text, c.Bool("prune"), useColor(c, c.App.Writer))
	}
	if err != nil {
		return err
	}
	if err := deployFailure(rows); err != nil {
		return err
	}
	if len(report.PruneErrors) > 0 {
		return failed(errors.New(strings.Join(report.PruneErrors, "; ")))
	}
	if evalFailed {
		return failed(errors.New("some hosts could not be evaluated and were not deployed (see above)"))
	}
	return nil
}

// enforceReportLimits applies the limits on reports/ to each deployed host
// (removing the oldest logs beyond them, unless dryRun). A host over them is
// a warning, never a failure: the other hosts' publications stand, and its
// own publication does not depend on what it uploads.
func enforceReportLimits(root string, hosts []fleet.Host, l status.ReportLimits, dryRun bool) []string {
	var ws []string
	for _, h := range hosts {
		u, err := status.EnforceReportLimits(root, h.Name, l, dryRun)
		var ue *status.UsageError
		switch {
		case errors.As(err, &ue):
			// No chroot yet: a dry run of a new host.
		case err != nil:
			ws = append(ws, err.Error()+" (bento status shows it as unreadable until the host stays within them)")
		case u.Exceeded():
			ws = append(ws, fmt.Sprintf("host %s: %s: %s", h.Name, status.ReportsOverLimit, u.Describe()))
		}
	}
	return ws
}

// planTargets turns the built hosts into publish targets. A host whose
// build failed (unless force) or whose tree or secrets cannot be read gets
// its failed row now; targetRow maps each target to its row.
func planTargets(hosts []fleet.Host, builds map[string]builder.Result, dir, secretsDir string, users, force bool) (rows []deployRow, targets []publish.Target, targetRow []int, warnings []string) {
	rows = make([]deployRow, len(hosts))
	for i, h := range hosts {
		rows[i].Host = h.Name
		fail := func(err error) { rows[i].Result = publish.Result{Host: h.Name, Status: publish.StatusFailed, Err: err} }
		b, built := builds[h.Name]
		if built {
			rows[i].Build = &b
			switch {
			case b.Status == builder.StatusBuilt && b.CopyErr != nil:
				// Built, so published; but the cache the host may rely on
				// lacks it, which the exit status reports.
				rows[i].CopyError = b.Reason()
			case !b.OK():
				rows[i].BuildFailed = true
				if !force {
					fail(errors.New(b.Reason()))
					continue
				}
			}
		}
		src, err := publish.SourceFor(h, dir)
		if err != nil {
			fail(err)
			continue
		}
		t := publish.Target{Host: h, Source: src}
		if built && !rows[i].BuildFailed {
			t.ExpectedToplevel = b.OutPath
		}
		if secretsDir != "" {
			extra, ws, err := secretsExtra(secretsDir, h, users)
			warnings = append(warnings, ws...)
			if err != nil {
				fail(err)
				continue
			}
			t.Extra = extra
		}
		targets = append(targets, t)
		targetRow = append(targetRow, i)
	}
	return rows, targets, targetRow, warnings
}

// orphans lists the chroots of hosts no longer in the fleet (judged
// against every host, selected or not) and, with prune, removes them.
func orphans(pub *publish.Publisher, hosts []fleet.Host, prune, withReports bool) (list []publish.Orphan, pruned, pruneErrors []string, err error) {
	known := make([]string, len(hosts))
	for i, h := range hosts {
		known[i] = h.Name
	}
	if list, err = pub.Orphans(known); err != nil || !prune {
		return list, nil, nil, err
	}
	for _, o := range list {
		if err := pub.Prune(o, withReports); err != nil {
			pruneErrors = append(pruneErrors, err.Error())
			continue
		}
		pruned = append(pruned, o.Host)
	}
	return list, pruned, pruneErrors, nil
}

// deployRow is one host's line: its build (when one ran) and publication.
type deployRow struct {
	publish.Result
	// BuildFailed: the build failed; with --force the host was published
	// anyway, otherwise its previous publication stays.
	BuildFailed bool            `json:"buildFailed,omitempty"`
	Build       *builder.Result `json:"build,omitempty"`
	// CopyError: built and published, but not copied to --copy-to.
	CopyError string `json:"copyError,omitempty"`
}

func (r deployRow) MarshalJSON() ([]byte, error) {
	type plain deployRow
	out := struct {
		plain
		OK    bool   `json:"ok"`
		Error string `json:"error,omitempty"`
	}{plain: plain(r), OK: r.OK() && !r.BuildFailed && r.CopyError == ""}
	if r.Err != nil {
		out.Error = hostless(r.Host, r.Err)
	}
	return json.Marshal(out)
}

type deployReport struct {
	OK          bool             `json:"ok"`
	DryRun      bool             `json:"dryRun"`
	Root        string           `json:"chrootRoot"`
	Hosts       []deployRow      `json:"hosts"`
	Skipped     []skippedHost    `json:"skipped"`
	Orphans     []publish.Orphan `json:"orphans"`
	Pruned      []string         `json:"pruned"`
	PruneErrors []string         `json:"pruneErrors,omitempty"`
	Warnings    []string         `json:"warnings"`
	Notes       []string         `json:"notes"`
}

func printDeployJSON(w io.Writer, r deployReport) error {
	for _, s := range []*[]string{&r.Pruned, &r.Warnings, &r.Notes} {
		if *s == nil {
			*s = []string{}
		}
	}
	if r.Skipped == nil {
		r.Skipped = []skippedHost{}
	}
	if r.Orphans == nil {
		r.Orphans = []publish.Orphan{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// hostNotes gathers the trees' notes once each: every host of a flake
// shares one tree, and one line about untracked files is enough.
func hostNotes(rows []deployRow) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rows {
		for _, n := range r.Notes {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
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
func printDeploy(w, ew io.Writer, r deployReport, prune, color bool) error {
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
		if !h.OK() || h.BuildFailed || h.CopyError != "" {
			bad = append(bad, h.Host)
		}
		if _, err := fmt.Fprintf(w, "%-*s  %s\n", width, h.Host, paint(colour, text)); err != nil {
			return err
		}
	}
	if len(r.Orphans) > 0 {
		fmt.Fprintln(w)
		for _, o := range r.Orphans {
			state := "no longer in the fleet"
			if o.ReportsOnly {
				state = "no longer in the fleet, only its reports/ are left"
			}
			verb := ""
			switch {
			case slices.Contains(r.Pruned, o.Host):
				verb = " — pruned"
			case prune && r.DryRun:
				verb = " — would be pruned"
			case !prune:
				verb = " (--prune removes it)"
			}
			fmt.Fprintf(w, "%s: %s%s\n", o.Path, state, verb)
		}
	}
	for _, e := range r.PruneErrors {
		fmt.Fprintln(ew, "bento: prune:", e)
	}
	for _, warn := range r.Warnings {
		fmt.Fprintln(ew, "bento: warning:", warn)
	}
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
	_, err := fmt.Fprintf(w, "\n%s\n", line)
	return err
}

// describe is a host's line, its colour and the word it counts under.
func describe(h deployRow, dryRun bool) (text, colour, key string) {
	forced := ""
	if h.BuildFailed {
		forced = " — its build failed, published anyway (--force)"
	}
	if h.CopyError != "" {
		forced = " — not copied to the cache: " + h.CopyError
	}
	switch h.Status {
	case publish.StatusFailed:
		return "failed: " + hostless(h.Host, h.Err), "\x1b[31m", "failed"
	case publish.StatusUnchanged:
		return "unchanged " + h.Version + forced, "", "unchanged"
	case publish.StatusUpdated:
		verb, key := "updated", "updated"
		if dryRun {
			verb, key = "would update", "would update"
		}
		return fmt.Sprintf("%s %s: same files, manifest only (expected system %s)%s", verb, h.Version, dash(h.ExpectedToplevel), forced), "\x1b[32m", key
	}
	verb, key := "published", "published"
	if dryRun {
		verb, key = "would publish", "would publish"
	}
	detail := fmt.Sprintf("%d copied, %d linked, %d shared, %s written", h.Copied, h.Linked, h.Shared, bytesize.Format(h.BytesWritten))
	if dryRun {
		detail = fmt.Sprintf("%d to copy, %d to link, %d to share", h.Copied, h.Linked, h.Shared)
	}
	if h.Copied+h.Linked+h.Shared == 0 {
		detail = "the kept previous version goes live again"
	}
	if h.Previous != "" {
		detail += "; was " + h.Previous
	}
	colour = "\x1b[32m"
	if h.BuildFailed {
		colour = "\x1b[33m"
	}
	return fmt.Sprintf("%s %s (%s)%s", verb, h.Version, detail, forced), colour, key
}

// hostless drops the "host X: " prefix: the line already starts with X.
func hostless(host string, err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "host "+host+": ")
	return strings.TrimPrefix(s, "publish: ")
}

// deployFailure names the hosts that failed (build or publication).
func deployFailure(rows []deployRow) error {
	var failedHosts, forced, notCopied []string
	for _, r := range rows {
		switch {
		case !r.OK():
			failedHosts = append(failedHosts, r.Host)
		case r.BuildFailed:
			forced = append(forced, r.Host)
		case r.CopyError != "":
			notCopied = append(notCopied, r.Host)
		}
	}
	var parts []string
	if len(failedHosts) > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d hosts failed and keep their previous publication: %s", len(failedHosts), len(rows), strings.Join(failedHosts, ", ")))
	}
	if len(forced) > 0 {
		parts = append(parts, fmt.Sprintf("%d hosts were published although their build failed: %s", len(forced), strings.Join(forced, ", ")))
	}
	if len(notCopied) > 0 {
		parts = append(parts, fmt.Sprintf("%d hosts were built and published but not copied to the cache: %s", len(notCopied), strings.Join(notCopied, ", ")))
	}
	if len(parts) == 0 {
		return nil
	}
	return failed(errors.New(strings.Join(parts, "; ")))
}
