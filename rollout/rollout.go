package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/status"
)

// ErrActive is wrapped by the refusal of a deploy (or a new rollout) over
// an active rollout.
var ErrActive = errors.New("a rollout is in progress")

// errNothingToDo stops a deploy.Run whose step publishes nothing (before
// discovery: nothing is read or written but the record).
var errNothingToDo = errors.New("nothing to publish")

// Options are a rollout start's.
type Options struct {
	// Deploy is the deploy that builds every selected host; its Hooks are
	// the rollout's.
	Deploy deploy.Options
	Policy Policy
	// WaveTags maps tags to waves; a host with several mapped tags goes
	// into the lowest of their waves. Hosts with none keep
	// services.bento.rollout.wave.
	WaveTags map[string]int
	// Supersede replaces an active rollout instead of refusing to start.
	Supersede bool
	// SnapshotDir (absolute, outside the chroot root: publish never ships
	// a tree from inside it) keeps the snapshots of the trees.
	SnapshotDir string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func now(f func() time.Time) time.Time {
	if f == nil {
		return time.Now().UTC()
	}
	return f().UTC()
}

// Guard is a Hooks.Locked for a plain deploy: it refuses to publish while
// a rollout is active, unless supersede, which ends the rollout (the
// deploy's publication then replaces whatever waves it had reached).
func Guard(supersede bool, clock func() time.Time) func(ctx context.Context, root string) error {
	return func(ctx context.Context, root string) error {
		return guard(root, supersede, "bento deploy --supersede", now(clock))
	}
}

func guard(root string, supersede bool, by string, t time.Time) error {
	s, err := Load(root)
	if err != nil {
		if supersede {
			return nil
		}
		return fmt.Errorf("%w (its record is unreadable: %v); pass --supersede to deploy anyway", ErrActive, err)
	}
	if s == nil || !s.Phase.Active() {
		return nil
	}
	if !supersede {
		return &deploy.ConfigError{Err: fmt.Errorf("%w on %s (%s): it publishes wave by wave, and publishing now would bypass its waves; wait for it (bento rollout status), abort it (bento rollout abort), or pass --supersede to replace it", ErrActive, root, s.Summary())}
	}
	s.setPhase(PhaseSuperseded, "superseded by "+by, t)
	return s.save(root, t)
}

// Start builds every selected host, snapshots the tree and the versions it
// replaces, publishes the first wave and records the rollout. The report
// has rows for the first wave's hosts only.
func Start(ctx context.Context, o Options) (*deploy.Report, *State, error) {
	if err := checkStart(o); err != nil {
		return nil, nil, &deploy.ConfigError{Err: err}
	}
	d := o.Deploy
	var st *State
	var root string
	d.Hooks.Locked = func(ctx context.Context, r string) error {
		root = r
		if within(r, o.SnapshotDir) {
			return &deploy.ConfigError{Err: fmt.Errorf("the rollout's snapshots (%s, from --state-dir) would be inside the chroot root %s, whose files never ship: choose a state directory outside it", o.SnapshotDir, r)}
		}
		return guard(r, o.Supersede, "a new rollout", now(o.Now))
	}
	d.Hooks.Hold = func(ctx context.Context, f *fleet.Fleet, hosts []fleet.Host, builds []builder.Result) (map[string]bool, error) {
		var err error
		st, err = plan(ctx, root, f, hosts, builds, o)
		if err != nil {
			return nil, err
		}
		return st.heldAtStart(), nil
	}
	d.Hooks.Done = func(ctx context.Context, r *deploy.Report) error {
		t := now(o.Now)
		st.published(0, r.Hosts, t)
		st.judgeWave(root, t)
		if err := st.save(root, t); err != nil {
			return err
		}
		removeOthers(st.SnapshotDir, st.ID)
		record(ctx, root, history.RolloutStep{RolloutID: st.ID, Wave: st.Waves[0].Number, Action: "start", Reason: st.Waves[0].Verdict, Hosts: st.publishedHosts(0), At: t}, o.Deploy.Print)
		return nil
	}
	report, err := deploy.Run(ctx, d)
	return report, st, err
}

// checkStart refuses the options no rollout can start with.
func checkStart(o Options) error {
	if err := o.Policy.Check(); err != nil {
		return err
	}
	if !filepath.IsAbs(o.SnapshotDir) {
		return fmt.Errorf("rollout: the snapshot directory %q is not an absolute path", o.SnapshotDir)
	}
	if o.Deploy.DryRun {
		return errors.New("a rollout cannot be a dry run: run bento deploy --dry-run to see what it would publish")
	}
	return nil
}

// within tells whether path p is root or inside it.
func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// heldAtStart are the hosts the first publication holds back: those of
// later waves.
func (st *State) heldAtStart() map[string]bool {
	held := map[string]bool{}
	for _, h := range st.Hosts {
		if h.Wave != st.Waves[0].Number {
			held[h.Name] = true
		}
	}
	return held
}

// plan makes the rollout's record: waves, hosts, snapshots.
func plan(ctx context.Context, root string, f *fleet.Fleet, hosts []fleet.Host, builds []builder.Result, o Options) (*State, error) {
	st, err := newState(o, now(o.Now))
	if err != nil {
		return nil, err
	}
	base := filepath.Join(st.SnapshotDir, st.ID)
	if err := os.RemoveAll(base); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	pl := &planner{st: st, root: root, f: f, tags: o.WaveTags, builds: map[string]builder.Result{},
		sources: map[publish.Source]int{}, previous: map[string]int{}, waves: map[int][]string{}}
	for _, b := range builds {
		pl.builds[b.Host] = b
	}
	for _, h := range hosts {
		if err := pl.add(ctx, h); err != nil {
			return nil, err
		}
	}
	sort.Slice(st.Hosts, func(i, j int) bool { return st.Hosts[i].Name < st.Hosts[j].Name })
	st.Waves = wavesOf(pl.waves)
	if len(st.Waves) == 0 {
		return nil, &deploy.ConfigError{Err: errors.New("nothing to roll out: no host selected")}
	}
	st.addRoots(ctx, base, o.Deploy)
	// A kill -9 or a power cut after the record is written must not leave
	// it naming a snapshot whose files were not on disk yet.
	if err := syncFS(base); err != nil {
		return nil, err
	}
	return st, nil
}

// newState is the record of a rollout starting at t, with the deploy's
// settings, before any host.
func newState(o Options, t time.Time) (*State, error) {
	st := &State{Format: stateFormat, ID: t.Format("20060102T150405Z"), Phase: PhaseRunning, StartedAt: t, Since: t, Policy: o.Policy, SnapshotDir: filepath.Clean(o.SnapshotDir)}
	st.Settings = Settings{Users: o.Deploy.Users, HostGroup: o.Deploy.HostGroup, Retention: o.Deploy.Retention,
		SecretsDir: o.Deploy.SecretsDir, Cache: o.Deploy.Cache, ReportLimits: o.Deploy.ReportLimits,
		HistoryRetention: o.Deploy.HistoryRetention, NextPublicationKey: o.Deploy.NextPublicationKey, Force: o.Deploy.Force}
	if k := o.Deploy.PublicationKey; k != nil {
		st.Settings.PublicationKey = k.Public().String()
	}
	// Steps run from another directory (the server's timer): paths absolute.
	if err := absPaths(&st.Settings); err != nil {
		return nil, err
	}
	return st, nil
}

// planner adds the selected hosts to a new record, snapshotting each
// distinct tree once.
type planner struct {
	st       *State
	root     string
	f        *fleet.Fleet
	tags     map[string]int
	builds   map[string]builder.Result
	sources  map[publish.Source]int
	previous map[string]int
	waves    map[int][]string
}

// add records host h: its wave, its build, the snapshot of its tree and
// the version it replaces.
func (pl *planner) add(ctx context.Context, h fleet.Host) error {
	if h.Name == Dir {
		// publish keeps <root>/.bento-state/<host>/ and empties it of
		// what it does not know: it would remove the rollout's record.
		return &deploy.ConfigError{Err: fmt.Errorf("host %s: a host named %q cannot take part in a rollout (its server state directory is the rollout's); rename it or deploy it without --rollout", h.Name, Dir)}
	}
	rh := Host{Name: h.Name, Wave: waveOf(h, pl.tags), Spec: h, Ref: h.Ref}
	if b, ok := pl.builds[h.Name]; ok {
		rh.recordBuild(b)
	}
	src, err := publish.SourceFor(h, pl.f.Dir)
	if err != nil {
		return fmt.Errorf("host %s: %w", h.Name, err)
	}
	if rh.Source, err = pl.snapshotSource(ctx, src); err != nil {
		return err
	}
	if rh.Previous, err = pl.st.keepPrevious(ctx, pl.root, h.Name, pl.previous); err != nil {
		return err
	}
	pl.st.Hosts = append(pl.st.Hosts, rh)
	pl.waves[rh.Wave] = append(pl.waves[rh.Wave], h.Name)
	return nil
}

// recordBuild keeps what the host's build gave: its system, or why it
// failed.
func (h *Host) recordBuild(b builder.Result) {
	if b.Status == builder.StatusBuilt {
		h.Toplevel = b.OutPath
		return
	}
	h.BuildError = clip(b.Reason(), 300)
	if h.BuildError == "" {
		h.BuildError = "build " + string(b.Status)
	}
}

// snapshotSource is the index in Sources of src's snapshot, taken the
// first time a host names it.
func (pl *planner) snapshotSource(ctx context.Context, src publish.Source) (int, error) {
	if i, ok := pl.sources[src]; ok {
		return i, nil
	}
	st := pl.st
	i := len(st.Sources)
	name := filepath.Join(st.ID, "source-"+strconv.Itoa(i))
	if err := snapshotTree(ctx, src, pl.root, filepath.Join(st.SnapshotDir, name)); err != nil {
		return 0, fmt.Errorf("rollout: snapshot of %s: %w", src.Root, err)
	}
	pl.sources[src] = i
	st.Sources = append(st.Sources, name)
	return i, nil
}

// wavesOf are the waves, by number, each with its hosts sorted.
func wavesOf(waves map[int][]string) []Wave {
	nums := make([]int, 0, len(waves))
	for n := range waves {
		nums = append(nums, n)
	}
	sort.Ints(nums)
	var out []Wave
	for _, n := range nums {
		sort.Strings(waves[n])
		out = append(out, Wave{Number: n, Hosts: waves[n], State: WavePending})
	}
	return out
}

// keepPrevious records the version host's chroot serves now and keeps a
// snapshot of its tree, once per distinct tree: abort republishes it,
// long after retention may have removed its objects from the chroots.
func (st *State) keepPrevious(ctx context.Context, root, host string, seen map[string]int) (*Previous, error) {
	m, err := liveManifest(root, host)
	if err != nil {
		return &Previous{Source: -1, Missing: err.Error()}, nil
	}
	if m == nil {
		return nil, nil
	}
	p := &Previous{Version: m.Version, Toplevel: m.ExpectedToplevel, Source: -1}
	key := publish.Version(m.Files, nil)
	if i, ok := seen[key]; ok {
		p.Source = i
		return p, nil
	}
	name := filepath.Join(st.ID, "previous-"+strconv.Itoa(len(st.Previous)))
	if err := snapshotManifest(ctx, m, filepath.Join(root, host), filepath.Join(st.SnapshotDir, name)); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		p.Missing = err.Error()
		return p, nil
	}
	seen[key] = len(st.Previous)
	p.Source = len(st.Previous)
	st.Previous = append(st.Previous, name)
	return p, nil
}

// waveOf is h's wave: the lowest wave of its mapped tags, or its option.
func waveOf(h fleet.Host, tags map[string]int) int {
	w, found := 0, false
	for _, t := range h.Options.Tags {
		if n, ok := tags[t]; ok && (!found || n < w) {
			w, found = n, true
		}
	}
	if found {
		return w
	}
	return h.Options.Wave
}

// removeOthers drops the snapshots of earlier rollouts (best effort: a
// leftover only takes disk, and the next start retries).
func removeOthers(base, keep string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() && e.Name() != keep {
			os.RemoveAll(filepath.Join(base, e.Name()))
		}
	}
}

// published records the rows of wave i's publication.
func (st *State) published(i int, rows []deploy.Row, t time.Time) {
	w := &st.Waves[i]
	deadline := t.Add(st.Policy.WaveDeadline)
	w.State, w.PublishedAt, w.Deadline, w.Since = WavePublished, &t, &deadline, &t
	st.Current = i
	for _, r := range rows {
		h := st.host(r.Host)
		if h == nil {
			continue
		}
		if r.OK() {
			h.Version, h.PublishError, h.PublishedAt = r.Version, "", &t
		} else {
			h.Version, h.PublishError = "", clip(r.ErrorDetail(), 300)
		}
	}
	for _, n := range w.Hosts {
		if h := st.host(n); h != nil && h.Version == "" && h.PublishError == "" {
			h.PublishError = "not published (see the deploy's output)"
		}
	}
}

// StepOptions are a step's (and pause/resume/abort's).
type StepOptions struct {
	// Deploy carries the chroot root, the lock wait, Nix, the logger and
	// Print; the rest comes from the record.
	Deploy deploy.Options
	Now    func() time.Time
}

// StepResult says what a step did.
type StepResult struct {
	State *State
	// Decision is the current wave's judgement.
	Decision Decision
	// Published is the deploy of the next wave, when there was one.
	Published *deploy.Report
}

// ErrNoRollout: the root has no recorded rollout.
var ErrNoRollout = errors.New("no rollout recorded")

// Step judges the current wave from the hosts' reports and, when it
// passed, publishes the next one; when a host failed, it halts. Steps are
// idempotent: a wave is published once, a halted, paused or finished
// rollout is left as it is.
func Step(ctx context.Context, o StepOptions) (*StepResult, error) {
	pub, d, err := prepare(o.Deploy, false)
	if err != nil {
		return nil, err
	}
	s := &stepRun{o: o, pub: pub, res: &StepResult{}}
	return s.res, runHooked(ctx, d, s.locked, s.done)
}

// runHooked runs the deploy of a step or an abort with its hooks: a
// locked hook that stops it with errNothingToDo is no error.
func runHooked(ctx context.Context, d deploy.Options, locked func(context.Context, string) error, done func(context.Context, *deploy.Report) error) error {
	d.Hooks.Locked, d.Hooks.Done = locked, done
	_, err := deploy.Run(ctx, d)
	if errors.Is(err, errNothingToDo) {
		return nil
	}
	return err
}

// stepRun is one step: its deploy's hooks and what they decide.
type stepRun struct {
	o   StepOptions
	pub *publication
	res *StepResult
	// next is the index of the wave the step publishes.
	next int
}

// locked judges the current wave under the lock; it lets the deploy go
// on only to publish the next wave.
func (s *stepRun) locked(ctx context.Context, r string) error {
	st, err := s.pub.reload(r)
	if err != nil {
		return err
	}
	s.res.State = st
	if st.Phase != PhaseRunning {
		s.res.Decision = Decision{ActionWait, "rollout is " + string(st.Phase)}
		return errNothingToDo
	}
	t := now(s.o.Now)
	s.res.Decision = st.judge(r, t)
	if s.settle(st, t) {
		return nil
	}
	if err := st.save(r, t); err != nil {
		return err
	}
	if s.res.Decision.Action != ActionWait {
		action := "done"
		if s.res.Decision.Action == ActionHalt {
			action = "halt"
		}
		record(ctx, r, history.RolloutStep{RolloutID: st.ID, Wave: st.Waves[st.Current].Number, Action: action, Reason: s.res.Decision.Reason, At: t}, s.o.Deploy.Print)
	}
	return errNothingToDo
}

// settle applies the decision to the current wave; true when the next
// wave is to be published (then its hosts are the publication's).
func (s *stepRun) settle(st *State, t time.Time) bool {
	w := &st.Waves[st.Current]
	switch s.res.Decision.Action {
	case ActionHalt:
		w.State, w.Since = WaveHalted, &t
		st.setPhase(PhaseHalted, s.res.Decision.Reason, t)
	case ActionAdvance:
		w.State, w.Since = WavePassed, &t
		if st.Current+1 == len(st.Waves) {
			st.setPhase(PhaseDone, "", t)
			return false
		}
		s.next = st.Current + 1
		s.pub.names = st.Waves[s.next].Hosts
		return true
	}
	return false
}

// done records the next wave's publication.
func (s *stepRun) done(ctx context.Context, r *deploy.Report) error {
	t := now(s.o.Now)
	s.res.Published = r
	st := s.res.State
	st.published(s.next, r.Hosts, t)
	st.judgeWave(s.pub.root, t)
	if err := st.save(s.pub.root, t); err != nil {
		return err
	}
	record(ctx, s.pub.root, history.RolloutStep{RolloutID: st.ID, Wave: st.Waves[s.next].Number, Action: "advance", Reason: s.res.Decision.Reason, Hosts: st.publishedHosts(s.next), At: t}, s.o.Deploy.Print)
	return nil
}

func loadExisting(root string) (*State, error) {
	st, err := Load(root)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, &deploy.ConfigError{Err: fmt.Errorf("%w in %s: start one with bento rollout start (or bento deploy --rollout)", ErrNoRollout, root)}
	}
	return st, nil
}

// publication is what a step's or an abort's deploy publishes: decided
// under the lock (st, names), read by the deploy's Discover and Source.
type publication struct {
	root    string
	id      string
	restore bool
	st      *State
	names   []string
}

// prepare reads the record (without the lock: the deploy's options, such
// as the cache pool, are needed before the lock is taken; reload checks
// under the lock that it is still the same rollout) and gives the deploy
// that publishes, from the record, the hosts the locked hook picks:
// their recorded specs, builds and snapshot trees (the previous ones when
// restore), with the settings the rollout started with.
func prepare(base deploy.Options, restore bool) (*publication, deploy.Options, error) {
	root, err := filepath.Abs(base.Root)
	if err != nil {
		return nil, base, err
	}
	st, err := loadExisting(root)
	if err != nil {
		return nil, base, err
	}
	pub := &publication{root: root, id: st.ID, restore: restore, st: st}
	d := base
	d.Root = root
	d.Users, d.HostGroup, d.Retention = st.Settings.Users, st.Settings.HostGroup, st.Settings.Retention
	d.SecretsDir, d.Cache, d.ReportLimits = st.Settings.SecretsDir, st.Settings.Cache, st.Settings.ReportLimits
	d.HistoryRetention = st.Settings.HistoryRetention
	if err := st.usePublicationKey(&d); err != nil {
		return nil, base, err
	}
	d.Build, d.DryRun, d.Force, d.Prune, d.PruneReports, d.Select = nil, false, false, false, false, nil
	d.Force = st.Settings.Force && !restore
	d.Prebuilt = st.prebuilt(restore)
	d.Discover = pub.discover
	d.Source = pub.source
	return pub, d, nil
}

// usePublicationKey checks that d signs with the key the rollout started
// with, and gives it the recorded next key unless it has one.
func (st *State) usePublicationKey(d *deploy.Options) error {
	want := st.Settings.PublicationKey
	if want == "" {
		return nil
	}
	if d.PublicationKey == nil || d.PublicationKey.Public().String() != want {
		return &deploy.ConfigError{Err: fmt.Errorf("rollout %s signs its manifests with publication key %s, and hosts that pin it refuse any other: pass that key (--publication-key, as to the deploy that started it)", st.ID, want)}
	}
	if d.NextPublicationKey == "" {
		d.NextPublicationKey = st.Settings.NextPublicationKey
	}
	return nil
}

// prebuilt are the recorded builds a publication reuses: the systems the
// rollout built (the previous ones when restore).
func (st *State) prebuilt(restore bool) []builder.Result {
	var out []builder.Result
	for _, h := range st.Hosts {
		if h.BuildError != "" && !restore {
			// As at start: its previous publication stays (unless Force).
			out = append(out, builder.Result{Host: h.Name, Status: builder.StatusFailed, Err: errors.New(h.BuildError)})
			continue
		}
		top := h.Toplevel
		if restore {
			top = prevToplevel(h.Previous)
		}
		if top != "" {
			out = append(out, builder.Result{Host: h.Name, Status: builder.StatusBuilt, OutPath: top})
		}
	}
	return out
}

// discover is the publication's deploy.Options.Discover: the recorded
// fleet, with the hosts the locked hook picked selected.
func (pub *publication) discover(context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
	all := make([]fleet.Host, len(pub.st.Hosts))
	for i, h := range pub.st.Hosts {
		all[i] = h.Spec
		all[i].Ref = h.Ref
	}
	var hosts []fleet.Host
	for _, n := range pub.names {
		if h := pub.st.host(n); h != nil {
			spec := h.Spec
			spec.Ref = h.Ref
			hosts = append(hosts, spec)
		}
	}
	return &fleet.Fleet{Ref: "rollout " + pub.st.ID, Hosts: all}, hosts, false, nil
}

// source is the publication's deploy.Options.Source: the host's snapshot
// tree (its previous one when restore).
func (pub *publication) source(h fleet.Host) (publish.Source, error) {
	st := pub.st
	rh := st.host(h.Name)
	switch {
	case rh == nil:
		return publish.Source{}, errors.New("not in the rollout")
	case !pub.restore:
		return SourceOf(filepath.Join(st.SnapshotDir, st.Sources[rh.Source])), nil
	case rh.Previous == nil || rh.Previous.Source < 0:
		return publish.Source{}, errors.New("its previous version was not kept: abort cannot restore it")
	}
	return SourceOf(filepath.Join(st.SnapshotDir, st.Previous[rh.Previous.Source])), nil
}

// reload reads the record again under the lock.
func (pub *publication) reload(root string) (*State, error) {
	st, err := loadExisting(root)
	if err != nil {
		return nil, err
	}
	if st.ID != pub.id {
		return nil, fmt.Errorf("rollout %s was replaced by rollout %s meanwhile: run the command again", pub.id, st.ID)
	}
	pub.st = st
	return st, nil
}

// judge reads the reports of every published host: a host of an earlier
// wave failing now halts, too. It returns the current wave's decision.
func (st *State) judge(root string, t time.Time) Decision {
	var bad []Verdict
	var cur []Verdict
	for i, w := range st.Waves {
		if w.State == WavePending {
			continue
		}
		for _, n := range w.Hosts {
			h := st.host(n)
			if h == nil {
				continue
			}
			rep, err := ReadReport(root, n)
			h.State, h.Detail = JudgeHost(h.Version, rep, err)
			v := Verdict{n, h.State, h.Detail}
			if i == st.Current {
				cur = append(cur, v)
			} else if h.State == HostBad {
				bad = append(bad, v)
			}
		}
	}
	w := &st.Waves[st.Current]
	d := Decide(append(cur, bad...), *w.PublishedAt, t, st.Policy)
	w.Verdict = d.Reason
	return d
}

// judgeWave refreshes the verdicts right after a publication, for status.
func (st *State) judgeWave(root string, t time.Time) {
	d := st.judge(root, t)
	if d.Action == ActionHalt && strings.HasPrefix(d.Reason, "no host of the wave") {
		st.Waves[st.Current].State = WaveHalted
		st.setPhase(PhaseHalted, d.Reason, t)
	}
}

// ReadReport reads a host's reports/status.json (what the host wrote:
// bounded, inside its chroot, never followed out of it); nil when there is
// none.
func ReadReport(root, host string) (*Report, error) {
	r, err := status.OpenChroot(root, host)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := readRoot(r, manifest.StatusFile, status.MaxReportSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("status.json: %w", err)
	}
	if rep.Host != "" && rep.Host != host {
		return nil, fmt.Errorf("status.json is for host %q", clip(rep.Host, 60))
	}
	return &rep, nil
}

// Pause stops steps from publishing (the published waves stay).
func Pause(ctx context.Context, o StepOptions) (*State, error) {
	return change(ctx, o, "pause", func(st *State, t time.Time) error {
		if st.Phase != PhaseRunning {
			return &deploy.ConfigError{Err: fmt.Errorf("the rollout is %s, not running: nothing to pause", st.Phase)}
		}
		st.setPhase(PhasePaused, "paused by bento rollout pause", t)
		return nil
	})
}

// Resume lets a paused rollout step again. A halted one resumes too: the
// operator judged the failure acceptable; the wave is judged afresh.
func Resume(ctx context.Context, o StepOptions) (*State, error) {
	return change(ctx, o, "resume", func(st *State, t time.Time) error {
		if st.Phase != PhasePaused && st.Phase != PhaseHalted {
			return &deploy.ConfigError{Err: fmt.Errorf("the rollout is %s: only a paused or halted rollout resumes", st.Phase)}
		}
		st.setPhase(PhaseRunning, "", t)
		st.Waves[st.Current].State = WavePublished
		return nil
	})
}

func change(ctx context.Context, o StepOptions, action string, f func(*State, time.Time) error) (*State, error) {
	root, err := filepath.Abs(o.Deploy.Root)
	if err != nil {
		return nil, err
	}
	lock, err := publish.AcquireLock(ctx, root, o.Deploy.LockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	st, err := loadExisting(root)
	if err != nil {
		return nil, err
	}
	t := now(o.Now)
	if err := f(st, t); err != nil {
		return st, err
	}
	if err := st.save(root, t); err != nil {
		return st, err
	}
	record(ctx, root, history.RolloutStep{RolloutID: st.ID, Wave: st.Waves[st.Current].Number, Action: action, Reason: st.Reason, At: t}, o.Deploy.Print)
	return st, nil
}

// Abort republishes, through the normal publication (a new manifest, so a
// new sequence), the version each host served before to the hosts that
// already got the new one; the others keep what they have. The rollout
// ends aborted.
func Abort(ctx context.Context, o StepOptions) (*StepResult, error) {
	pub, d, err := prepare(o.Deploy, true)
	if err != nil {
		return nil, err
	}
	a := &abortRun{o: o, pub: pub, res: &StepResult{}}
	return a.res, runHooked(ctx, d, a.locked, a.done)
}

// abortRun is one abort: its deploy's hooks.
type abortRun struct {
	o   StepOptions
	pub *publication
	res *StepResult
}

// locked ends the rollout under the lock and picks the hosts to restore;
// with none, it records the abort and stops the deploy.
func (a *abortRun) locked(ctx context.Context, r string) error {
	st, err := a.pub.reload(r)
	if err != nil {
		return err
	}
	a.res.State = st
	if !st.Phase.Active() {
		return &deploy.ConfigError{Err: fmt.Errorf("the rollout is %s: nothing to abort", st.Phase)}
	}
	t := now(a.o.Now)
	st.setPhase(PhaseAborted, "aborted by bento rollout abort", t)
	for _, h := range st.Hosts {
		if h.restorable() {
			a.pub.names = append(a.pub.names, h.Name)
		}
	}
	if len(a.pub.names) > 0 {
		return nil
	}
	if err := st.save(r, t); err != nil {
		return err
	}
	record(ctx, r, history.RolloutStep{RolloutID: st.ID, Wave: st.Waves[st.Current].Number, Action: "abort", Reason: st.Reason, At: t}, a.o.Deploy.Print)
	return errNothingToDo
}

// restorable: the host got the new version, and abort has its previous
// one to republish.
func (h *Host) restorable() bool {
	return h.Version != "" && h.Previous != nil && h.Previous.Source >= 0 && h.Previous.Version != h.Version
}

// done records which hosts the abort restored.
func (a *abortRun) done(ctx context.Context, r *deploy.Report) error {
	t := now(a.o.Now)
	a.res.Published = r
	st := a.res.State
	if failed := st.markRestored(r.Hosts); len(failed) > 0 {
		st.Reason += fmt.Sprintf("; %d host(s) could not be restored: %s", len(failed), list(failed, 5))
	}
	if err := st.save(a.pub.root, t); err != nil {
		return err
	}
	record(ctx, a.pub.root, history.RolloutStep{RolloutID: st.ID, Wave: st.Waves[st.Current].Number, Action: "abort", Reason: st.Reason, Hosts: st.restoredHosts(), At: t}, a.o.Deploy.Print)
	return nil
}

// markRestored marks the hosts whose republication succeeded and names
// those whose failed.
func (st *State) markRestored(rows []deploy.Row) []string {
	var failed []string
	for _, row := range rows {
		h := st.host(row.Host)
		if h == nil {
			continue
		}
		if row.OK() {
			h.Restored = true
		} else {
			failed = append(failed, row.Host)
		}
	}
	return failed
}

func (st *State) restoredHosts() []string {
	var restored []string
	for _, h := range st.Hosts {
		if h.Restored {
			restored = append(restored, h.Name)
		}
	}
	return restored
}

// Unrestorable names the published hosts abort cannot restore (a new
// host, or a previous version whose tree was not kept).
func (st *State) Unrestorable() []string {
	var out []string
	for _, h := range st.Hosts {
		if h.Version == "" {
			continue
		}
		if h.Previous == nil || h.Previous.Source < 0 {
			out = append(out, h.Name)
		}
	}
	return slices.Clip(out)
}

func absPaths(s *Settings) error {
	abs := func(p *string) error {
		if *p == "" {
			return nil
		}
		a, err := filepath.Abs(*p)
		*p = a
		return err
	}
	if err := abs(&s.SecretsDir); err != nil {
		return err
	}
	if s.Cache != nil {
		c := *s.Cache
		if err := abs(&c.Key); err != nil {
			return err
		}
		if err := abs(&c.Pool); err != nil {
			return err
		}
		s.Cache = &c
	}
	return nil
}

// addRoots keeps the systems the rollout publishes (and those abort would
// restore) from Nix's garbage collector while it lasts: the builder's own
// roots move on with every build of a host, and a later wave's binary
// cache needs its system in the store. They live in the snapshot
// directory, so the next rollout's start frees them. Best effort: a
// system already gone (an old previous one) is a warning.
func (st *State) addRoots(ctx context.Context, base string, d deploy.Options) {
	if d.Nix == nil {
		return
	}
	paths := st.systems()
	dirRoots := filepath.Join(base, "roots")
	if err := os.MkdirAll(dirRoots, 0o700); err != nil {
		return
	}
	for i, p := range paths {
		link := filepath.Join(dirRoots, strconv.Itoa(i))
		if _, err := d.Nix.Run(ctx, nix.Cmd{Tool: "nix-store", Args: []string{"--realise", p, "--add-root", link}}); err != nil && d.Print != nil {
			d.Print(fmt.Sprintf("warning: rollout: keeping %s from the garbage collector: %v", p, err))
		}
	}
}

// systems are the store paths of the systems the rollout publishes and
// those abort would restore, each once.
func (st *State) systems() []string {
	seen := map[string]bool{}
	var paths []string
	for _, h := range st.Hosts {
		for _, p := range []string{h.Toplevel, prevToplevel(h.Previous)} {
			if p != "" && !seen[p] && manifest.CheckStorePath(p, "") == nil {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	return paths
}

func prevToplevel(p *Previous) string {
	if p == nil {
		return ""
	}
	return p.Toplevel
}
