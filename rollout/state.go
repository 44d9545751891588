// Package rollout publishes a new version of the fleet in waves: the
// canaries (services.bento.rollout.wave = 0) first, each later wave only
// once the hosts of the previous one reported up-to-date and healthy on
// it. In a pull design the publication is the gate: a host can only apply
// what its own chroot serves, so a wave that is not published cannot get
// the version, asleep or not, and the server needs no connection to any
// host.
//
// A rollout is recorded in <root>/.bento-state/rollout/state.json (written
// atomically, read back as hostile input); the snapshots of the tree it
// publishes and of the versions it replaced (for abort) live outside the
// chroot root, under Options.SnapshotDir (bento's state directory), since
// publish never ships a tree from inside the root. Every change happens while the
// chroot root's deploy lock is held (inside a deploy.Run), so two steps
// at once, or a step and a deploy, are serialised.
package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/status"
)

// Dir is the rollout's directory inside the chroot root's state directory.
const Dir = "rollout"

// stateFile is the record of the current (or last) rollout.
const stateFile = "state.json"

// stateFormat is the record's format number.
const stateFormat = 1

// maxStateBytes bounds what is read back: a 10 000-host record is a few MiB.
const maxStateBytes = 64 << 20

// Phase is where a rollout is.
type Phase string

const (
	// PhaseRunning: a wave is published and being judged.
	PhaseRunning Phase = "running"
	// PhasePaused: step judges and publishes nothing until resume.
	PhasePaused Phase = "paused"
	// PhaseHalted: a host failed on the new version; nothing more is
	// published (abort restores the previous version).
	PhaseHalted Phase = "halted"
	// PhaseDone: every wave got the version.
	PhaseDone Phase = "done"
	// PhaseAborted: the previous version was republished.
	PhaseAborted Phase = "aborted"
	// PhaseSuperseded: a deploy (--supersede) replaced it.
	PhaseSuperseded Phase = "superseded"
)

// Active tells whether the rollout still holds the fleet: a deploy
// must not publish over it unless it supersedes it.
func (p Phase) Active() bool { return p == PhaseRunning || p == PhasePaused || p == PhaseHalted }

// WaveState is where one wave is.
type WaveState string

const (
	WavePending   WaveState = "pending"
	WavePublished WaveState = "published"
	WavePassed    WaveState = "passed"
	WaveHalted    WaveState = "halted"
)

// Policy is how a wave is judged.
type Policy struct {
	// Quorum is the share (0 < q ≤ 1) of a wave's hosts that must be
	// up-to-date and healthy on the new version.
	Quorum float64 `json:"quorum"`
	// WaveDeadline is how long after its publication a wave's silent hosts
	// count: after it, hosts that did not report are left out of the
	// quorum (unless Strict).
	WaveDeadline time.Duration `json:"waveDeadline"`
	// Strict: hosts that did not report block their wave, deadline or not.
	Strict bool `json:"strict,omitempty"`
}

// DefaultPolicy is the flags' defaults.
var DefaultPolicy = Policy{Quorum: 1, WaveDeadline: time.Hour}

// Check refuses a policy no wave could pass.
func (p Policy) Check() error {
	if !(p.Quorum > 0 && p.Quorum <= 1) {
		return fmt.Errorf("--quorum %g%% is not between 0 (exclusive) and 100%%", p.Quorum*100)
	}
	if p.WaveDeadline <= 0 {
		return fmt.Errorf("--wave-deadline must be positive (got %s)", p.WaveDeadline)
	}
	return nil
}

// State is a rollout as recorded.
type State struct {
	Format int    `json:"format"`
	ID     string `json:"id"`
	Phase  Phase  `json:"state"`
	// Reason says why it is halted, paused, aborted or superseded.
	Reason    string    `json:"reason,omitempty"`
	StartedAt time.Time `json:"startedAt"`
	UpdatedAt time.Time `json:"updatedAt"`
	// Since is when it entered its phase.
	Since  time.Time `json:"since"`
	Policy Policy    `json:"policy"`
	// Current is the index in Waves of the wave being judged.
	Current int    `json:"currentWave"`
	Waves   []Wave `json:"waves"`
	Hosts   []Host `json:"hosts"`
	// Settings are the deploy's, so that every wave is published as the
	// first was.
	Settings Settings `json:"settings"`
	// SnapshotDir holds the snapshots, outside the chroot root.
	SnapshotDir string `json:"snapshotDir"`
	// Sources are the snapshot directories (relative to SnapshotDir) of
	// the new tree; Host.Source indexes them.
	Sources []string `json:"sources"`
	// Previous are the snapshots of the trees the rollout replaced.
	Previous []string `json:"previous,omitempty"`
}

// Wave is one wave of hosts.
type Wave struct {
	Number      int        `json:"wave"`
	Hosts       []string   `json:"hosts"`
	State       WaveState  `json:"state"`
	PublishedAt *time.Time `json:"publishedAt,omitempty"`
	// Deadline is PublishedAt + the policy's WaveDeadline.
	Deadline *time.Time `json:"deadline,omitempty"`
	Since    *time.Time `json:"since,omitempty"`
	// Verdict is the last step's judgement of the wave, for status.
	Verdict string `json:"verdict,omitempty"`
}

// Host is one host of the rollout.
type Host struct {
	Name string     `json:"host"`
	Wave int        `json:"wave"`
	Spec fleet.Host `json:"spec"`
	// Ref is Spec.Ref, which fleet.Host does not serialise.
	Ref    string `json:"ref,omitempty"`
	Source int    `json:"source"`
	// Toplevel is the system the rollout built ("" when unknown).
	Toplevel string `json:"toplevel,omitempty"`
	// BuildError says why its build at start failed: its wave then keeps
	// its previous publication, as a deploy would (unless Force).
	BuildError string `json:"buildError,omitempty"`
	// Version is what the rollout published to the host; "" until its
	// wave is published (or when that publication failed).
	Version     string     `json:"version,omitempty"`
	PublishedAt *time.Time `json:"publishedAt,omitempty"`
	// PublishError is why the host's publication failed.
	PublishError string `json:"publishError,omitempty"`
	// Previous is the version the host served before (nil for a new host).
	Previous *Previous `json:"previous,omitempty"`
	// Restored: abort republished the previous version.
	Restored bool `json:"restored,omitempty"`
	// State and Detail are the last step's verdict on the host.
	State  HostState `json:"verdict,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// Previous is a version a host served before the rollout.
type Previous struct {
	Version  string `json:"version"`
	Toplevel string `json:"toplevel,omitempty"`
	// Source indexes State.Previous; -1 when its tree could not be kept.
	Source int `json:"source"`
	// Missing says why its tree could not be kept (abort cannot restore it).
	Missing string `json:"missing,omitempty"`
}

// Settings are the deploy options a rollout republishes with.
type Settings struct {
	Users        bool                 `json:"users"`
	HostGroup    string               `json:"hostGroup,omitempty"`
	Retention    time.Duration        `json:"retention"`
	SecretsDir   string               `json:"secretsDir,omitempty"`
	Cache        *deploy.CacheOptions `json:"cache,omitempty"`
	ReportLimits *status.ReportLimits `json:"reportLimits,omitempty"`
	// HistoryRetention is the history's (history.DefaultRetention when 0).
	HistoryRetention time.Duration `json:"historyRetention,omitempty"`
	// PublicationKey is the public half of the key that signed the first
	// wave ("" unsigned): every later wave, and abort, must be signed by
	// it too, or hosts that pin it refuse them. The secret key is never
	// recorded: each step reads it again.
	PublicationKey     string `json:"publicationKey,omitempty"`
	NextPublicationKey string `json:"nextPublicationKey,omitempty"`
	// Force publishes hosts whose build failed, as deploy --force.
	Force bool `json:"force,omitempty"`
}

// dir is the rollout directory under root.
func dir(root string) string { return filepath.Join(root, publish.StateDir, Dir) }

// Load reads the recorded rollout of the chroot root, read-only (status
// and serve show it); (nil, nil) when there is none.
func Load(root string) (*State, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir(abs), stateFile)
	data, err := statefile.Read(path, maxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("rollout record: %w", err)
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("rollout record %s: %w (move it aside to start afresh)", path, err)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("rollout record %s: %w (move it aside to start afresh)", path, err)
	}
	return &s, nil
}

// validate checks what the code indexes or joins into paths: a record
// damaged by hand must fail here, not panic or escape later.
func (s *State) validate() error {
	if s.Format != stateFormat {
		return fmt.Errorf("format %d, this bento reads %d", s.Format, stateFormat)
	}
	if len(s.Waves) == 0 || s.Current < 0 || s.Current >= len(s.Waves) {
		return fmt.Errorf("current wave %d of %d", s.Current, len(s.Waves))
	}
	if err := s.checkSnapshotDirs(); err != nil {
		return err
	}
	for i := range s.Hosts {
		if err := s.checkHost(i); err != nil {
			return err
		}
	}
	return nil
}

// checkSnapshotDirs checks the snapshot directory and the names in it,
// which are joined into paths.
func (s *State) checkSnapshotDirs() error {
	if !filepath.IsAbs(s.SnapshotDir) {
		return fmt.Errorf("snapshot directory %q is not absolute", s.SnapshotDir)
	}
	for _, d := range append(slicesClone(s.Sources), s.Previous...) {
		if d == "" || filepath.IsAbs(d) || strings.Contains(d, "..") {
			return fmt.Errorf("snapshot directory %q is not a plain relative name", d)
		}
	}
	return nil
}

// checkHost checks host i: its name, its order, and the snapshots it
// indexes.
func (s *State) checkHost(i int) error {
	h := s.Hosts[i]
	if err := fleet.ValidateName(h.Name); err != nil {
		return err
	}
	if i > 0 && s.Hosts[i-1].Name >= h.Name {
		return fmt.Errorf("hosts are not sorted by name (%s before %s)", s.Hosts[i-1].Name, h.Name)
	}
	if h.Source < 0 || h.Source >= len(s.Sources) {
		return fmt.Errorf("host %s: source %d of %d", h.Name, h.Source, len(s.Sources))
	}
	if p := h.Previous; p != nil && (p.Source < -1 || p.Source >= len(s.Previous)) {
		return fmt.Errorf("host %s: previous source %d of %d", h.Name, p.Source, len(s.Previous))
	}
	return nil
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// save writes the record atomically (temp, fsync, rename): a kill -9
// leaves the old record or the new one, a full disk the old one.
func (s *State) save(root string, now time.Time) error {
	s.UpdatedAt = now
	d := dir(root)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("rollout record: %w", err)
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(d, stateFile), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("rollout record: %w", err)
	}
	return nil
}

// host returns the host named name.
func (s *State) host(name string) *Host {
	i := sort.Search(len(s.Hosts), func(i int) bool { return s.Hosts[i].Name >= name })
	if i < len(s.Hosts) && s.Hosts[i].Name == name {
		return &s.Hosts[i]
	}
	return nil
}

// setPhase moves the rollout to p, saying why.
func (s *State) setPhase(p Phase, reason string, now time.Time) {
	s.Phase, s.Reason, s.Since = p, reason, now
}

// Counts are a wave's hosts by verdict.
func (s *State) Counts(w Wave) map[HostState]int {
	c := map[HostState]int{}
	for _, n := range w.Hosts {
		if h := s.host(n); h != nil {
			st := h.State
			if st == "" {
				st = HostWaiting
			}
			c[st]++
		}
	}
	return c
}

// Summary is the rollout in one line, for bento status.
func (s *State) Summary() string {
	w := s.Waves[s.Current]
	line := fmt.Sprintf("rollout %s: %s since %s, wave %d (%d of %d)", s.ID, s.Phase, s.Since.UTC().Format(time.RFC3339), w.Number, s.Current+1, len(s.Waves))
	if s.Reason != "" {
		line += ": " + s.Reason
	} else if w.Verdict != "" {
		line += ": " + w.Verdict
	}
	return line
}

// View is the rollout as bento status --json and bento rollout status
// --json show it.
type View struct {
	ID          string     `json:"id"`
	State       Phase      `json:"state"`
	Reason      string     `json:"reason,omitempty"`
	Since       time.Time  `json:"since"`
	StartedAt   time.Time  `json:"startedAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	CurrentWave int        `json:"currentWave"`
	Policy      PolicyView `json:"policy"`
	Waves       []WaveView `json:"waves"`
	Hosts       []HostView `json:"hosts,omitempty"`
}

// PolicyView is the policy with the deadline in seconds.
type PolicyView struct {
	Quorum              float64 `json:"quorum"`
	WaveDeadlineSeconds float64 `json:"waveDeadlineSeconds"`
	Strict              bool    `json:"strict"`
}

// WaveView is one wave with its hosts counted per verdict.
type WaveView struct {
	Wave        int               `json:"wave"`
	State       WaveState         `json:"state"`
	Hosts       int               `json:"hosts"`
	Counts      map[HostState]int `json:"counts"`
	PublishedAt *time.Time        `json:"publishedAt,omitempty"`
	Deadline    *time.Time        `json:"deadline,omitempty"`
	Since       *time.Time        `json:"since,omitempty"`
	Verdict     string            `json:"verdict,omitempty"`
}

// HostView is one host's line.
type HostView struct {
	Host     string    `json:"host"`
	Wave     int       `json:"wave"`
	Version  string    `json:"version,omitempty"`
	Previous string    `json:"previousVersion,omitempty"`
	State    HostState `json:"state"`
	Detail   string    `json:"detail,omitempty"`
	Restored bool      `json:"restored,omitempty"`
}

// View summarises the record (with every host when hosts).
func (s *State) View(hosts bool) View {
	v := View{ID: s.ID, State: s.Phase, Reason: s.Reason, Since: s.Since, StartedAt: s.StartedAt, UpdatedAt: s.UpdatedAt,
		CurrentWave: s.Waves[s.Current].Number,
		Policy:      PolicyView{Quorum: s.Policy.Quorum, WaveDeadlineSeconds: s.Policy.WaveDeadline.Seconds(), Strict: s.Policy.Strict}}
	for _, w := range s.Waves {
		v.Waves = append(v.Waves, WaveView{Wave: w.Number, State: w.State, Hosts: len(w.Hosts), Counts: s.Counts(w),
			PublishedAt: w.PublishedAt, Deadline: w.Deadline, Since: w.Since, Verdict: w.Verdict})
	}
	if hosts {
		for _, h := range s.Hosts {
			hv := HostView{Host: h.Name, Wave: h.Wave, Version: h.Version, State: h.State, Detail: h.Detail + h.PublishError, Restored: h.Restored}
			if hv.State == "" {
				hv.State = HostWaiting
			}
			if h.Previous != nil {
				hv.Previous = h.Previous.Version
			}
			v.Hosts = append(v.Hosts, hv)
		}
	}
	return v
}
