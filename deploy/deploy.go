// Package deploy is the server's pipeline behind bento deploy: lock the
// chroot root, discover the fleet, refuse unsafe SFTP users, build, plan
// each host's publication (its tree, expected system and secrets), fill
// the binary caches, publish, bound the hosts' reports/, and list (and
// prune) the chroots of hosts no longer in the fleet. Run returns a
// Report with one row per host; printing it is the caller's (cmd/bento
// renders text or JSON, the e2e harness asserts on it).
package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/status"
)

// Options is one deploy.
type Options struct {
	// Root is the chroot root: one SFTP chroot per host.
	Root string
	// Users: running as root with user checks; the chroots' reports/ and
	// secrets belong to each host's SFTP user, which must exist and is
	// judged against the system's accounts and HostGroup.
	Users bool
	// HostGroup is the group of the hosts' SFTP users ("" skips the
	// group check); only with Users.
	HostGroup string
	DryRun    bool
	// Force publishes hosts whose build failed (without an expected
	// system).
	Force     bool
	LockWait  time.Duration
	Retention time.Duration
	// HistoryRetention is how long the server's history keeps events
	// (0: history.DefaultRetention); a deploy prunes older ones.
	HistoryRetention time.Duration
	// Build builds the hosts first; nil publishes without building (the
	// manifests then name no expected system).
	Build *builder.Options
	Nix   *nix.Runner
	// SecretsDir holds <host>/<name> secrets to publish ("" for none);
	// the caller has checked that Nix does not copy it into its store.
	SecretsDir string
	// SecretsOwner names the account owning host h's published secrets;
	// nil: h's services.bento.user with Users, nobody without.
	SecretsOwner func(h fleet.Host) string
	// Cache fills the hosts' binary caches; nil fills none.
	Cache *CacheOptions
	// PublicationKey signs every manifest written; nil signs none.
	// NextPublicationKey is announced in them (key rotation).
	PublicationKey     *manifest.SigningKey
	NextPublicationKey string
	// ReportLimits bounds each host's reports/; nil leaves them alone.
	ReportLimits *status.ReportLimits
	// Prune removes the chroots of hosts no longer in the fleet (with
	// PruneReports, their reports/ too).
	Prune, PruneReports bool
	// Discover evaluates the fleet and selects the hosts to deploy, after
	// the chroot root is locked; evalFailed says some hosts did not
	// evaluate (the others are deployed). It may fill Build.DrvPaths with
	// the derivations it instantiated. Its error is returned as it is.
	// nil: eval.Discover with Eval, then fleet.Select with Select.
	Discover func(ctx context.Context) (f *fleet.Fleet, selected []fleet.Host, evalFailed bool, err error)
	Eval     eval.Options
	Select   []string
	// Print receives what is worth saying before the build ends (the
	// root's warnings, skipped and refused hosts), one line each; nil
	// drops them (they are in the Report, too).
	Print  func(line string)
	Logger *slog.Logger
	// Prebuilt, without Build, are the builds of an earlier run to publish
	// as if they had just been built (their OutPath become the expected
	// systems, their caches are filled): a rollout's later waves.
	Prebuilt []builder.Result
	// Source, when set, gives each host's tree in place of the fleet's
	// directory (publish.SourceFor): a rollout publishes the tree it
	// started with, whatever the working tree holds since.
	Source func(h fleet.Host) (publish.Source, error)
	// Hooks let a caller (package rollout) act under the deploy's lock.
	Hooks Hooks
}

// Hooks run inside a deploy, while it holds the chroot root's lock, so
// that what they read and record is serialised with every publication.
type Hooks struct {
	// Locked runs once the root is locked, before discovery; its error
	// stops the deploy before anything is built or published.
	Locked func(ctx context.Context, root string) error
	// Hold runs after the build with the fleet, the hosts to publish and
	// their builds, and names the hosts not to publish now: they keep
	// their previous publication and have no row. Its error stops the
	// deploy before anything is published.
	Hold func(ctx context.Context, f *fleet.Fleet, hosts []fleet.Host, builds []builder.Result) (map[string]bool, error)
	// Done runs with the report before the lock is released; its error is
	// returned beside the report.
	Done func(ctx context.Context, r *Report) error
}

// ConfigError is a deploy the options or the server's setup stop before
// anything is built: a usage error, exit status 2 for bento deploy.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// ErrNothingDeployed: every selected host was refused (see the Print
// lines).
var ErrNothingDeployed = errors.New("nothing deployed: every selected host's services.bento.user is refused (see above)")

// Run deploys. Its error stops the deploy before anything is published
// (and is then the Discover's error, a *ConfigError, publish.ErrLocked,
// an error of builder.Build or the context's); a host's failure is in its
// row, and Report.Failure sums them up. Only Hooks.Done's error comes
// with a report: the publication happened.
func Run(ctx context.Context, opts Options) (*Report, error) {
	print := opts.Print
	if print == nil {
		print = func(string) {}
	}
	pub, pool, err := opts.open(ctx, print)
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	if opts.Hooks.Locked != nil {
		if err := opts.Hooks.Locked(ctx, pub.Root()); err != nil {
			return nil, err
		}
	}
	sel, err := opts.selectHosts(ctx, print)
	if err != nil {
		return nil, err
	}
	builds, err := opts.build(ctx, sel.hosts)
	if err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("deploy interrupted before publishing; nothing was published: %w", ctx.Err())
	}
	publishNow, err := opts.publishNow(ctx, sel, builds)
	if err != nil {
		return nil, err
	}
	plan := NewPlan(publishNow, builds, sel.fleet.Dir, opts)
	plan.fillCaches(ctx, pool, pub.Root())
	plan.publish(ctx, pub)
	runID, historyWarnings := opts.recordHistory(ctx, pub.Root(), plan.Rows)
	report := &Report{Root: pub.Root(), DryRun: opts.DryRun, Hosts: append(plan.Rows, sel.refused...), Skipped: sel.skipped,
		Builds: builds, RootWarnings: pub.Warnings(), EvalFailed: sel.evalFailed, DeployRun: runID}
	opts.finish(ctx, report, pub, pool, sel, append(plan.Warnings, historyWarnings...))
	if opts.Hooks.Done != nil {
		return report, opts.Hooks.Done(ctx, report)
	}
	return report, nil
}

// build builds the hosts (Options.Build), or takes Options.Prebuilt.
func (opts Options) build(ctx context.Context, hosts []fleet.Host) ([]builder.Result, error) {
	if opts.Build == nil {
		return opts.Prebuilt, nil
	}
	return builder.Build(ctx, opts.Nix, hosts, *opts.Build)
}

// publishNow is the hosts of sel to publish now: those Hooks.Hold does
// not hold back.
func (opts Options) publishNow(ctx context.Context, sel selection, builds []builder.Result) ([]fleet.Host, error) {
	if opts.Hooks.Hold == nil {
		return sel.hosts, nil
	}
	held, err := opts.Hooks.Hold(ctx, sel.fleet, sel.hosts, builds)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(slices.Clone(sel.hosts), func(h fleet.Host) bool { return held[h.Name] }), nil
}

// open locks and checks the chroot root before evaluating and building: a
// second deploy or an unusable root fails in a second, not after the
// builds.
func (opts Options) open(ctx context.Context, print func(string)) (*publish.Publisher, *cachePool, error) {
	pub, err := publish.Open(ctx, publish.Options{
		Root:      opts.Root,
		Users:     opts.Users,
		DryRun:    opts.DryRun,
		LockWait:  opts.LockWait,
		Retention: opts.Retention,
		Logger:    opts.Logger,

		SigningKey:         opts.PublicationKey,
		NextPublicationKey: opts.NextPublicationKey,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, publish.ErrLocked) {
			return nil, nil, err
		}
		return nil, nil, &ConfigError{err}
	}
	for _, w := range pub.Warnings() {
		print("warning: " + w)
	}
	if opts.Cache == nil || opts.DryRun || opts.Build == nil && opts.Prebuilt == nil {
		return pub, nil, nil
	}
	pool, err := openPool(*opts.Cache, pub.Root(), opts.Nix, opts.Logger)
	if err != nil {
		pub.Close()
		return nil, nil, &ConfigError{err}
	}
	return pub, pool, nil
}

// selection is the hosts a deploy goes on with.
type selection struct {
	fleet *fleet.Fleet
	// hosts are deployed and not refused; skipped are not deployed by
	// bento, refused have their failed rows.
	hosts      []fleet.Host
	skipped    []Skipped
	refused    []Row
	evalFailed bool
}

func (opts Options) selectHosts(ctx context.Context, print func(string)) (selection, error) {
	discover := opts.Discover
	if discover == nil {
		discover = opts.discover
	}
	f, selected, evalFailed, err := discover(ctx)
	if err != nil {
		return selection{}, err
	}
	sel := selection{fleet: f, evalFailed: evalFailed}
	sel.hosts, sel.skipped = SplitDeployed(selected)
	for _, s := range sel.skipped {
		print(fmt.Sprintf("skipping %s: %s", s.Host, s.Reason))
	}
	if len(sel.hosts) == 0 {
		return selection{}, &ConfigError{errors.New("nothing to deploy: no selected host is deployed by bento (set services.bento.enable = true on the hosts to deploy)")}
	}
	sel.hosts, sel.refused, err = opts.checkUsers(f.Hosts, sel.hosts, print)
	return sel, err
}

// finish does what follows the publication (bounding reports/, orphans,
// the cache pool) and completes the report's warnings and verdict.
func (opts Options) finish(ctx context.Context, report *Report, pub *publish.Publisher, pool *cachePool, sel selection, late []string) {
	if opts.ReportLimits != nil {
		late = append(late, enforceReportLimits(pub.Root(), sel.hosts, *opts.ReportLimits, opts.DryRun)...)
	}
	report.Notes = hostNotes(report.Hosts)
	if sel.evalFailed {
		// The list of hosts is incomplete: a host that did not evaluate
		// would look orphaned.
		late = append(late, "some hosts did not evaluate: chroots of hosts no longer in the fleet are neither listed nor pruned this time")
	} else {
		var err error
		report.Orphans, report.Pruned, report.Kept, report.PruneErrors, err = orphans(pub, sel.fleet.Hosts, opts.Prune && !opts.DryRun, opts.PruneReports)
		if err != nil {
			late = append(late, err.Error())
		}
	}
	// After the orphans went: their pool entries are free now, too.
	late = append(late, pool.prune(ctx)...)
	report.Warnings = append(slices.Clone(report.RootWarnings), late...)
	report.OK = report.Failure() == nil
}

// discover is Options.Discover's default: the whole evaluation fails on
// any host's error, unless Eval.KeepGoing.
func (opts Options) discover(ctx context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
	f, err := eval.Discover(ctx, opts.Nix, opts.Eval)
	var herrs eval.HostErrors
	evalFailed := false
	if err != nil {
		if f == nil || !errors.As(err, &herrs) {
			return nil, nil, false, err
		}
		evalFailed = true
	}
	selected, err := fleet.Select(f.Hosts, opts.Select)
	if err != nil {
		return nil, nil, false, &ConfigError{err}
	}
	return f, selected, evalFailed, nil
}

// checkUsers takes the refused hosts out of hosts (before building: their
// previous publication stays) and gives their rows. Without user checks,
// only the names are judged.
func (opts Options) checkUsers(all, hosts []fleet.Host, print func(string)) (ok []fleet.Host, refused []Row, err error) {
	var accounts Accounts = SystemAccounts{}
	group := opts.HostGroup
	if !opts.Users {
		accounts, group = NoAccounts{}, ""
	}
	bad, err := CheckUsers(all, hosts, group, accounts)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range SortedErrors(bad) {
		print(e.Error())
	}
	ok = slices.DeleteFunc(slices.Clone(hosts), func(h fleet.Host) bool {
		if err := bad[h.Name]; err != nil {
			refused = append(refused, Row{Result: failedResult(h.Name, err)})
			return true
		}
		return false
	})
	if len(ok) == 0 {
		return nil, nil, ErrNothingDeployed
	}
	return ok, refused, nil
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

// orphans lists the chroots of hosts no longer in the fleet (judged
// against every host, selected or not) and, with prune, removes them. An
// orphan with only reports/ left is kept unless withReports: pruning it
// again would remove nothing.
func orphans(pub *publish.Publisher, hosts []fleet.Host, prune, withReports bool) (list []publish.Orphan, pruned, kept, pruneErrors []string, err error) {
	known := make([]string, len(hosts))
	for i, h := range hosts {
		known[i] = h.Name
	}
	if list, err = pub.Orphans(known); err != nil || !prune {
		return list, nil, nil, nil, err
	}
	for _, o := range list {
		if o.ReportsOnly && !withReports {
			kept = append(kept, o.Host)
			continue
		}
		if err := pub.Prune(o, withReports); err != nil {
			pruneErrors = append(pruneErrors, err.Error())
			continue
		}
		pruned = append(pruned, o.Host)
	}
	return list, pruned, kept, pruneErrors, nil
}
