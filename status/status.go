// Package status tells, for every host of a fleet, whether it runs what was
// published. It reads each host's chroot (manifest.json and the host's own
// reports/status.json), the server's build records and, when the flake was
// evaluated, the fleet; and it decides a state from the versions these
// documents name, never from file times, so a host that finishes an old
// build after a new publication is never shown as up to date.
//
// This package is the model: Collect returns a Snapshot of Rows. Printing
// one (table, JSON, Prometheus) is status/render's; listing, printing and
// following a host's logs is status/logs'. Both import status, never the
// reverse.
package status

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
)

// State is what bento status says about one host.
type State string

// The states, most urgent first (the default sort order).
const (
	// Unreadable: the host's report or manifest cannot be read or parsed.
	Unreadable State = "unreadable"
	// Failing: the host tried the published version and failed.
	Failing State = "failing"
	// RolledBack: the host switched to the published version and went back.
	RolledBack State = "rolled-back"
	// Drift: the host applied the published version but runs another system
	// than the server built.
	Drift State = "drift"
	// Stale: the last report is older than the stale threshold.
	Stale State = "stale"
	// NeverSeen: published, but the host never reported.
	NeverSeen State = "never-seen"
	// Pending: a newer version is published than the host has applied.
	Pending State = "pending"
	// RebootRequired: applied; a new kernel, initrd or modules wait for a reboot.
	RebootRequired State = "reboot-required"
	// Unpublished: bento deploys the host but nothing is published for it yet.
	Unpublished State = "unpublished"
	// Removed: the chroot exists but the host is no longer in the flake.
	Removed State = "removed-from-flake"
	// UpToDate: applied the published version, and runs what the server built.
	UpToDate State = "up-to-date"
	// Disabled: the host imports the bento module with enable = false.
	Disabled State = "disabled"
	// NotManaged: the host does not import the bento module.
	NotManaged State = "not-managed"
)

// States lists every state, most urgent first.
var States = []State{Unreadable, Failing, RolledBack, Drift, Stale, NeverSeen, Pending, RebootRequired, Unpublished, Removed, UpToDate, Disabled, NotManaged}

// Exit statuses of bento status, from the worst state shown. They are part
// of bento's interface for monitoring: never renumber them.
const (
	// ExitUpToDate: every host is up to date (or not deployed by design:
	// not-managed, disabled, removed from the flake).
	ExitUpToDate = 0
	// ExitPending: some host has work to do and nothing is wrong yet
	// (pending, reboot-required, unpublished).
	ExitPending = 3
	// ExitSilent: some host has not reported recently or ever (stale,
	// never-seen), and none is failing.
	ExitSilent = 4
	// ExitFailing: some host is failing, rolled back, drifting or has an
	// unreadable report, or reported secrets it could not install.
	ExitFailing = 5
)

// ExitCode is the exit status a state alone would give.
func (s State) ExitCode() int {
	switch s {
	case Unreadable, Failing, RolledBack, Drift:
		return ExitFailing
	case Stale, NeverSeen:
		return ExitSilent
	case Pending, RebootRequired, Unpublished:
		return ExitPending
	default:
		return ExitUpToDate
	}
}

func (s State) rank() int {
	if i := slices.Index(States, s); i >= 0 {
		return i
	}
	return len(States)
}

// Build is the server's record of its last successful build of a host
// (builder.LastBuilds gives these).
type Build struct {
	OutPath  string
	DrvPath  string
	BuiltAt  time.Time
	Previous string
}

// DefaultStaleAfter is the stale threshold when neither --stale-after nor
// the host's poll interval is known: three 15-minute gaps, the longest
// between two polls of the module's default timer (*:0/10 with a 5-minute
// random delay).
const DefaultStaleAfter = 45 * time.Minute

// StaleIntervals is how many missed polls make a host stale.
const StaleIntervals = 3

// Options say what to read and how to judge it.
type Options struct {
	// Root is the chroot root holding one directory per host.
	Root string
	// Fleet is the evaluated flake; nil when status runs without evaluating
	// (then the hosts are what Root holds, and not-managed, disabled and
	// removed-from-flake cannot be told).
	Fleet *fleet.Fleet
	// EvalErrors are hosts of the flake that failed to evaluate: they are in
	// the flake, so never "removed", but their options are unknown.
	EvalErrors map[string]error
	// Builds are the server's last builds per host; nil when unknown.
	Builds map[string]Build
	// Select are host names, globs or @tags; none selects every host.
	Select []string
	// Now is the clock reading every age is measured from.
	Now time.Time
	// StaleAfter overrides the per-host threshold (StaleIntervals poll
	// intervals, else DefaultStaleAfter) when positive.
	StaleAfter time.Duration
	// Sort is the row order: "state" (default), "name", "seen" or "published".
	Sort string
	// Jobs bounds concurrent host reads; 0 picks a default.
	Jobs int
	// StoreDir is Nix's store directory (StoreDir asks Nix): a reported
	// system anywhere else is an invalid report. Empty checks the shape.
	StoreDir string
	// ReportLimits bound each host's reports/; zero fields are the
	// defaults. Collect enforces them: it removes the oldest logs of a
	// host over them.
	ReportLimits ReportLimits
	// History, when set, records the reports Collect read (only what
	// changed since the last reading); HistoryWarn receives its failures,
	// which never fail Collect.
	History     *history.DB
	HistoryWarn func(error)
}

// Row is one host's status. Its JSON field names are bento's documented
// interface (docs/status.md): add fields, never rename them.
type Row struct {
	Host    string `json:"host"`
	State   State  `json:"state"`
	Message string `json:"message"`
	// InFlake is null when the flake was not evaluated.
	InFlake *bool `json:"inFlake"`

	PublishedVersion string     `json:"publishedVersion"`
	PublishedAt      *time.Time `json:"publishedAt"`
	// ExpectedSystem is the toplevel the manifest names (the server's build
	// at publication time).
	ExpectedSystem string `json:"expectedSystem"`
	// ServerBuilt is the server's last build of the host, from its records.
	ServerBuilt string `json:"serverBuilt"`

	SeenVersion      string `json:"seenVersion"`
	AppliedVersion   string `json:"appliedVersion"`
	AttemptedVersion string `json:"attemptedVersion"`
	Stage            string `json:"stage"`
	Result           string `json:"result"`
	Error            string `json:"error"`
	RollbackReason   string `json:"rollbackReason"`
	// System is what the host reported running (or, for operation boot,
	// what it will boot).
	System string `json:"system"`
	// InvalidSystem is set when the report named something other than a
	// store path under Nix's store directory as its system (System is
	// then empty): a broken or hostile host.
	InvalidSystem bool `json:"invalidSystem,omitempty"`
	// ReportsOverLimit is set when the host's reports/ was over its
	// limits (bytes or files) when read: its report was not read, and its
	// oldest logs were removed as far as that helps (the message says).
	ReportsOverLimit bool `json:"reportsOverLimit,omitempty"`
	// ReportsBytes and ReportsFiles are what reports/ held when read
	// (before removals); lower bounds when the walk stopped at its budget.
	ReportsBytes int64 `json:"reportsBytes"`
	ReportsFiles int   `json:"reportsFiles"`
	// SystemMatch is System == the expected system, once the host applied
	// the published version; null before, or when a side is unknown.
	SystemMatch     *bool      `json:"systemMatch"`
	RebootRequired  bool       `json:"rebootRequired"`
	RebootScheduled *time.Time `json:"rebootScheduled"`
	Attempts        int        `json:"attempts"`
	NextRetry       *time.Time `json:"nextRetry"`
	// LastSeen is when the host's last report was finished (by its clock).
	LastSeen *time.Time `json:"lastSeen"`
	// LastSeenSeconds is the age of LastSeen at generatedAt.
	LastSeenSeconds   *int64 `json:"lastSeenSeconds"`
	StaleAfterSeconds int64  `json:"staleAfterSeconds"`
	Log               string `json:"log"`
	AgentVersion      string `json:"agentVersion"`
	// BytesFetched is what the host's last update downloaded from the
	// server: changed files and, through its binary cache, NARs.
	BytesFetched int64 `json:"bytesFetched"`
	// SecretErrors are the secrets the host could not install, with why
	// (never their content); null when none.
	SecretErrors map[string]string `json:"secretErrors"`
	// Progress is the tick under way on the host, from its live
	// progress; null when none is.
	Progress *Progress `json:"progress"`
	// Server is the server (primary or mirror, "address:port") the host's
	// last report was delivered to; empty when the report does not say.
	Server string `json:"server"`
	// Health is the host's last health check run (after its last switch,
	// or a continuous check on a quiet tick), PreviousHealth the old
	// system's after a health-check rollback; absent when none ran.
	Health         *manifest.Health `json:"health,omitempty"`
	PreviousHealth *manifest.Health `json:"previousHealth,omitempty"`

	seen seenReport
}

// Summary counts hosts per state.
type Summary struct {
	Total  int           `json:"total"`
	States map[State]int `json:"states"`
	// SecretErrors counts the hosts, of any deployed state, that reported
	// secrets they could not install.
	SecretErrors int `json:"secretErrors"`
}

// Snapshot is the status of the selected hosts at one moment.
type Snapshot struct {
	Format      int       `json:"format"`
	GeneratedAt time.Time `json:"generatedAt"`
	Root        string    `json:"root"`
	// Flake is the evaluated flake reference; "" when not evaluated.
	Flake    string  `json:"flake"`
	Summary  Summary `json:"summary"`
	ExitCode int     `json:"exitCode"`
	Hosts    []Row   `json:"hosts"`
	// HistoryBytes is the size of the server's history database
	// (history.db and its log); 0 when there is none.
	HistoryBytes int64 `json:"historyBytes"`
	// Rollout is the chroot root's rollout (package rollout's View), set
	// by the caller when one is recorded.
	Rollout any `json:"rollout,omitempty"`
}

// Format is the version of the JSON document.
const Format = 1

// UsageError is bad input from the command line: a selection that
// matches nothing, an unknown sort key.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ErrNoRoot is returned (wrapped) when the chroot root does not exist.
var ErrNoRoot = errors.New("chroot root does not exist")

// Collect reads every selected host and decides its state.
func Collect(ctx context.Context, o Options) (*Snapshot, error) {
	names, err := chrootHosts(o.Root)
	if err != nil {
		return nil, err
	}
	hosts, err := candidates(o, names)
	if err != nil {
		return nil, err
	}
	rows := make([]Row, len(hosts))
	keep := make([]bool, len(hosts))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs())
	for i, c := range hosts {
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			rows[i], keep[i] = o.row(c)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	s := &Snapshot{Format: Format, GeneratedAt: o.Now.UTC(), Root: o.Root, Hosts: []Row{}}
	if o.Fleet != nil {
		s.Flake = o.Fleet.Ref
	}
	for i, r := range rows {
		if keep[i] {
			s.Hosts = append(s.Hosts, r)
		}
	}
	o.record(ctx, s, s.Hosts)
	if err := SortRows(s.Hosts, o.Sort); err != nil {
		return nil, err
	}
	s.Summary, s.ExitCode = summarize(s.Hosts)
	return s, nil
}

// jobs is how many hosts are read at once.
func (o Options) jobs() int {
	if o.Jobs > 0 {
		return o.Jobs
	}
	return 4 * runtime.NumCPU()
}

// row reads one candidate and decides its row; false when it is not a
// host to show.
func (o Options) row(c candidate) (Row, bool) {
	in := readHost(o.Root, c.name, o.ReportLimits)
	// A directory in the root that holds neither a manifest nor
	// reports, and is no host of the flake, is not a chroot.
	if c.fleetHost == nil && !c.evalFailed && !in.chroot {
		return Row{}, false
	}
	in.storeDir = o.StoreDir
	in.fleetKnown = o.Fleet != nil
	in.fleetHost = c.fleetHost
	in.evalErr = o.EvalErrors[c.name]
	if b, ok := o.Builds[c.name]; ok {
		in.build = &b
	}
	in.now = o.Now
	in.staleAfter = staleAfter(o, c.fleetHost, in.manifest)
	r := decide(in)
	r.seen = in.seen()
	return r, true
}

func summarize(rows []Row) (Summary, int) {
	sum := Summary{Total: len(rows), States: map[State]int{}}
	code := ExitUpToDate
	for _, r := range rows {
		sum.States[r.State]++
		code = max(code, r.State.ExitCode())
		if r.HasSecretErrors() {
			// A secret that did not install leaves a service without it,
			// whatever the host's state: monitoring must see it.
			sum.SecretErrors++
			code = max(code, ExitFailing)
		}
	}
	return sum, code
}

// HasSecretErrors tells whether a host bento deploys reported secrets it
// could not install. A report left in the chroot of a host no longer
// deployed (disabled, not managed, removed) does not count.
func (r *Row) HasSecretErrors() bool {
	switch r.State {
	case Removed, Disabled, NotManaged:
		return false
	}
	return len(r.SecretErrors) > 0
}

// candidate is a host to show: from the flake, the chroot root, or both.
type candidate struct {
	name       string
	fleetHost  *fleet.Host
	evalFailed bool
	inChroot   bool
}

// chrootHosts lists the directories of root whose names are host names.
func chrootHosts(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s (pass --chroot-root or set BENTO_CHROOT_ROOT; bento deploy creates it)", ErrNoRoot, root)
		}
		return nil, fmt.Errorf("chroot root %s: %w", root, err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() || fleet.ValidateName(e.Name()) != nil {
			continue
		}
		names = append(names, e.Name())
	}
	return names, nil
}

func candidates(o Options, inRoot []string) ([]candidate, error) {
	hs := hostSet{byName: map[string]*candidate{}}
	if o.Fleet != nil {
		hs.addFleet(o)
	}
	hs.addChroots(inRoot)
	if err := o.checkSelect(); err != nil {
		return nil, err
	}
	picked, err := fleet.Select(hs.all, o.Select)
	if err != nil {
		return nil, &UsageError{err}
	}
	out := make([]candidate, 0, len(picked))
	for _, h := range picked {
		out = append(out, *hs.byName[h.Name])
	}
	return out, nil
}

// hostSet gathers the candidates by name, and in all the hosts a
// selection picks from, in the order they were first named.
type hostSet struct {
	byName map[string]*candidate
	all    []fleet.Host
}

// get is the candidate named name, added if new.
func (hs *hostSet) get(name string) *candidate {
	c, ok := hs.byName[name]
	if !ok {
		c = &candidate{name: name}
		hs.byName[name] = c
	}
	return c
}

// addFleet adds the hosts of the flake.
func (hs *hostSet) addFleet(o Options) {
	for i := range o.Fleet.Hosts {
		h := &o.Fleet.Hosts[i]
		hs.get(h.Name).fleetHost = h
		hs.all = append(hs.all, *h)
	}
	// Hosts whose evaluation failed are shown with the error.
	for _, n := range o.evalFailures() {
		if c := hs.get(n); c.fleetHost == nil {
			c.evalFailed = true
			hs.all = append(hs.all, fleet.Host{Name: n})
		}
	}
}

// addChroots adds the hosts that have a directory in the chroot root.
func (hs *hostSet) addChroots(inRoot []string) {
	for _, n := range inRoot {
		c := hs.get(n)
		c.inChroot = true
		if c.fleetHost == nil && !c.evalFailed {
			hs.all = append(hs.all, fleet.Host{Name: n})
		}
	}
}

// evalFailures are the valid host names of EvalErrors.
func (o Options) evalFailures() []string {
	var names []string
	for n := range o.EvalErrors {
		if fleet.ValidateName(n) == nil {
			names = append(names, n)
		}
	}
	return names
}

// checkSelect refuses a selection by tag when the flake was not
// evaluated: without its options no host has tags.
func (o Options) checkSelect() error {
	if o.Fleet != nil {
		return nil
	}
	for _, p := range o.Select {
		if strings.HasPrefix(p, "@") {
			return &UsageError{fmt.Errorf("host selection %q: selecting by tag needs the flake's options; drop --no-eval", p)}
		}
	}
	return nil
}

// staleAfter is the host's threshold: the override, else StaleIntervals
// poll intervals (from the flake, else from the manifest), else the default.
func staleAfter(o Options, h *fleet.Host, m *manifestInfo) time.Duration {
	if o.StaleAfter > 0 {
		return o.StaleAfter
	}
	spec := ""
	if h != nil {
		spec = h.Options.Interval
	}
	if spec == "" && m != nil {
		spec = m.interval
	}
	if d, ok := PollInterval(spec); ok {
		return StaleIntervals * d
	}
	return DefaultStaleAfter
}

// SortRows orders rows by key: "state" (most urgent first, the default),
// "name", "seen" (longest silent first) or "published" (latest first).
// Ties are broken by host name.
func SortRows(rows []Row, key string) error {
	var cmp func(a, b *Row) int
	switch key {
	case "", "state":
		cmp = func(a, b *Row) int {
			if c := a.State.rank() - b.State.rank(); c != 0 {
				return c
			}
			// Within a state, hosts with secrets not installed need action.
			return boolRank(b.HasSecretErrors()) - boolRank(a.HasSecretErrors())
		}
	case "name":
		cmp = func(a, b *Row) int { return 0 }
	case "seen":
		cmp = func(a, b *Row) int { return compareTimes(a.LastSeen, b.LastSeen) }
	case "published":
		cmp = func(a, b *Row) int { return -compareTimes(a.PublishedAt, b.PublishedAt) }
	default:
		return &UsageError{fmt.Errorf("--sort %q: sort by state, name, seen or published", key)}
	}
	slices.SortStableFunc(rows, func(a, b Row) int {
		if c := cmp(&a, &b); c != 0 {
			return c
		}
		return strings.Compare(a.Host, b.Host)
	})
	return nil
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// compareTimes orders unknown times first, then oldest first.
func compareTimes(a, b *time.Time) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	}
	return a.Compare(*b)
}

// hostDir is the chroot of a host.
func hostDir(root, host string) string { return filepath.Join(root, host) }
