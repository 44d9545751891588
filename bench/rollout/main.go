// Command rollout simulates a fleet of hosts pulling from real chroots
// while a rollout publishes a version in waves: real publication (package
// deploy, no build), real rollout steps, simulated agents that tick at
// random times of a virtual clock (each host every -interval with its own
// phase, some asleep) and write the reports an agent writes. It prints,
// for a bad version (it fails on one canary), how many hosts were exposed
// to it (their chroot served it at one of their ticks) before the halt,
// against a plain deploy (every host), and for a good version how long
// (virtual) it took to reach every wave; and the wall time of rollout
// step over the whole fleet: judging only, and judging plus publishing a
// wave.
//
//	go run ./bench/rollout -hosts 1000 -waves 4
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/rollout"
)

func main() {
	hosts := flag.Int("hosts", 1000, "hosts in the fleet")
	waves := flag.Int("waves", 4, "waves (wave 0 gets 2% of the hosts, the others share the rest, growing)")
	interval := flag.Duration("interval", 15*time.Minute, "each host's poll interval (virtual time)")
	asleep := flag.Float64("asleep", 0.03, "share of hosts that never report")
	seed := flag.Uint64("seed", 1, "random seed")
	dir := flag.String("dir", "", "where to work (default: a temporary directory)")
	flag.Parse()
	if err := run(*hosts, *waves, *interval, *asleep, *seed, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench/rollout:", err)
		os.Exit(1)
	}
}

// sim is one simulated fleet.
type sim struct {
	root, fleetDir, snap string
	hosts                []fleet.Host
	phase                []time.Duration // each host's tick offset in its interval
	asleep               []bool
	applied              []string
	interval             time.Duration
	clock                time.Time
	bad                  string // the version that fails
	badHost              string // the one host it fails on
	exposed              map[string]bool
	judgeTimes           []time.Duration
	fullJudgeTimes       []time.Duration // with every wave published
	publishTimes         []time.Duration
}

func run(n, nWaves int, interval time.Duration, asleep float64, seed uint64, base string) error {
	work, err := os.MkdirTemp(base, "bento-bench-rollout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b9))
	sizes := waveSizes(n, nWaves)
	s := newSim(work, sizes, interval, asleep, rng)
	fmt.Printf("fleet: %d hosts in %d waves %v, poll every %s (virtual), %.0f%% of the later waves asleep; %d CPUs, load %s\n",
		n, nWaves, sizes, interval, asleep*100, runtime.NumCPU(), benchtb.LoadAvg())

	ctx := context.Background()
	if err := s.firstDeploy(ctx); err != nil {
		return err
	}
	policy := rollout.Policy{Quorum: 1, WaveDeadline: 2 * interval}
	if err := s.goodVersion(ctx, policy); err != nil {
		return err
	}
	if err := s.badVersion(ctx, policy, rng, sizes[0]); err != nil {
		return err
	}
	s.reportSteps()
	return nil
}

// newSim lays out a fleet of waves of the given sizes: each host's tick
// phase and whether it sleeps are drawn from rng, host by host.
func newSim(work string, sizes []int, interval time.Duration, asleep float64, rng *rand.Rand) *sim {
	s := &sim{root: filepath.Join(work, "root"), fleetDir: filepath.Join(work, "fleet"), snap: filepath.Join(work, "state"),
		interval: interval, clock: time.Date(2026, 6, 1, 8, 0, 0, 0, time.UTC)}
	i := 0
	for w, size := range sizes {
		for range size {
			name := fmt.Sprintf("host-%04d", i)
			s.hosts = append(s.hosts, fleet.Host{Name: name, Managed: true, Enable: true, Layout: fleet.LayoutFlake,
				Ref: "path:" + s.fleetDir, Attr: fleet.ConfigAttr(name),
				Options: fleet.Options{User: name, Mode: manifest.ModeBuild, Operation: "switch", Tags: []string{}, Wave: w}})
			s.phase = append(s.phase, time.Duration(rng.Int64N(int64(interval))))
			// Canaries are machines someone watches: never asleep.
			s.asleep = append(s.asleep, w > 0 && rng.Float64() < asleep)
			i++
		}
	}
	s.applied = make([]string, len(s.hosts))
	return s
}

// firstDeploy publishes v1 to every host with a plain deploy, timed, and
// has every host apply it.
func (s *sim) firstDeploy(ctx context.Context) error {
	if err := s.write("v1"); err != nil {
		return err
	}
	start := time.Now()
	if _, err := deploy.Run(ctx, s.deployOptions()); err != nil {
		return err
	}
	fmt.Printf("first deploy of %d hosts: %s\n", len(s.hosts), time.Since(start).Round(time.Millisecond))
	s.tickAll(func(int) bool { return true }) // everyone on v1
	return nil
}

// goodVersion rolls out a good version: how long until every wave has it.
func (s *sim) goodVersion(ctx context.Context, policy rollout.Policy) error {
	if err := s.write("v2"); err != nil {
		return err
	}
	t0 := s.clock
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: s.deployOptions(), Policy: policy, Now: s.now, SnapshotDir: s.snap}); err != nil {
		return err
	}
	st, err := s.drive(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("good version: rollout %s after %s (virtual); waves published at %s\n", st.Phase, s.clock.Sub(t0), publishedOffsets(st, t0))
	return nil
}

// badVersion rolls out a bad version: it fails on one canary, drawn from
// rng among the canaries wave 0 holds, and the rollout should halt.
func (s *sim) badVersion(ctx context.Context, policy rollout.Policy, rng *rand.Rand, canaries int) error {
	if err := s.write("v3-bad"); err != nil {
		return err
	}
	s.clock = s.clock.Add(s.interval)
	s.exposed = map[string]bool{}
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: s.deployOptions(), Policy: policy, Now: s.now, SnapshotDir: s.snap}); err != nil {
		return err
	}
	s.bad = s.version(s.hosts[0].Name)
	s.badHost = s.hosts[rng.IntN(canaries)].Name
	t0 := s.clock
	st, err := s.drive(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("bad version (fails on canary %s): rollout %s after %s (virtual): %s\n", s.badHost, st.Phase, s.clock.Sub(t0), st.Reason)
	served, outside := s.exposure()
	n := len(s.hosts)
	fmt.Printf("hosts served the bad version: %d of %d (goal: wave 0 only, %d hosts); hosts that applied it before the halt: %d; a plain deploy serves it to all %d (%.1f%% of that)\n",
		served, n, canaries, len(s.exposed), n, 100*float64(served)/float64(n))
	fmt.Printf("hosts outside wave 0 served or applying the bad version: %d\n", outside)
	return nil
}

// exposure counts the hosts whose chroot serves the bad version, and those
// outside wave 0 that it serves or that applied it (a host counts twice if
// both).
func (s *sim) exposure() (served, outside int) {
	for _, h := range s.hosts {
		if s.version(h.Name) == s.bad {
			served++
			if h.Options.Wave != 0 {
				outside++
			}
		}
	}
	for h := range s.exposed {
		if s.waveOf(h) != 0 {
			outside++
		}
	}
	return served, outside
}

// reportSteps prints the wall times of the rollout steps both rollouts ran.
func (s *sim) reportSteps() {
	fmt.Printf("rollout step, judging only (reads every published host's report): median %s, max %s over %d steps\n",
		benchtb.Median(s.judgeTimes), slices.Max(s.judgeTimes), len(s.judgeTimes))
	if len(s.fullJudgeTimes) > 0 {
		fmt.Printf("rollout step over all %d hosts (every wave published, judging only): median %s, max %s over %d steps (goal ≤ 1s)\n",
			len(s.hosts), benchtb.Median(s.fullJudgeTimes), slices.Max(s.fullJudgeTimes), len(s.fullJudgeTimes))
	}
	fmt.Printf("rollout step publishing a wave (judging + deploy of the wave's hosts): %s\n", benchtb.Rounds(s.publishTimes))
}

// waveSizes: 2% canaries (at least 1), the rest split 1:2:3… over the
// later waves.
func waveSizes(n, waves int) []int {
	if waves == 1 {
		return []int{n}
	}
	c := max(1, n/50)
	out := []int{c}
	rest, weights := n-c, 0
	for w := 1; w < waves; w++ {
		weights += w
	}
	left := rest
	for w := 1; w < waves; w++ {
		k := rest * w / weights
		if w == waves-1 {
			k = left
		}
		out = append(out, k)
		left -= k
	}
	return out
}

func (s *sim) now() time.Time { return s.clock }

func (s *sim) waveOf(name string) int {
	for _, h := range s.hosts {
		if h.Name == name {
			return h.Options.Wave
		}
	}
	return -1
}

func (s *sim) write(content string) error {
	if err := os.MkdirAll(filepath.Join(s.fleetDir, "modules"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.fleetDir, "flake.nix"), []byte("{ outputs = _: { }; }\n"), 0o644); err != nil {
		return err
	}
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(s.fleetDir, "modules", fmt.Sprintf("m%02d.nix", i)), fmt.Appendf(nil, "# %s %d\n", content, i), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (s *sim) deployOptions() deploy.Options {
	return deploy.Options{Root: s.root, Discover: func(context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
		return &fleet.Fleet{Ref: "path:" + s.fleetDir, Dir: s.fleetDir, Layout: fleet.LayoutFlake, Hosts: s.hosts}, s.hosts, false, nil
	}}
}

func (s *sim) version(host string) string {
	data, err := os.ReadFile(filepath.Join(s.root, host, manifest.ManifestFile))
	if err != nil {
		return ""
	}
	m, err := manifest.Parse(data)
	if err != nil {
		return ""
	}
	return m.Version
}

// tickAll makes every awake host for which due says so tick: read its
// manifest, apply a new version (or fail on the bad one), report.
func (s *sim) tickAll(due func(i int) bool) {
	for i, h := range s.hosts {
		if s.asleep[i] && s.applied[i] != "" || !due(i) {
			continue
		}
		v := s.version(h.Name)
		rep := map[string]any{"format": 1, "host": h.Name, "seenVersion": v, "finishedAt": s.clock.Format(time.RFC3339)}
		switch {
		case v == s.bad && s.bad != "":
			s.exposed[h.Name] = true
			if h.Name == s.badHost {
				rep["attemptedVersion"], rep["appliedVersion"], rep["stage"], rep["result"], rep["rollbackReason"] = v, s.applied[i], "rolled-back", "rolled-back", "health-check"
				break
			}
			fallthrough
		default:
			result := "unchanged"
			if s.applied[i] != v {
				result = "success"
			}
			s.applied[i] = v
			rep["attemptedVersion"], rep["appliedVersion"], rep["stage"], rep["result"] = v, v, "confirmed", result
		}
		data, _ := json.Marshal(rep)
		dir := filepath.Join(s.root, h.Name, "reports")
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "status.json"), data, 0o644)
	}
}

// drive advances the virtual clock minute by minute: hosts tick at their
// phase, a step runs every 5 minutes, until the rollout ends or a day
// passed.
func (s *sim) drive(ctx context.Context) (*rollout.State, error) {
	end := s.clock.Add(24 * time.Hour)
	for s.clock.Before(end) {
		prev := s.clock
		s.clock = s.clock.Add(time.Minute)
		s.tickAll(s.tickedSince(prev))
		if s.clock.Minute()%5 != 0 {
			continue
		}
		st, done, err := s.step(ctx)
		if err != nil {
			return nil, err
		}
		if done {
			return st, nil
		}
	}
	st, err := rollout.Load(s.root)
	return st, err
}

// tickedSince is tickAll's due for the minute that ended at s.clock:
// whether host i ticked since prev.
func (s *sim) tickedSince(prev time.Time) func(i int) bool {
	return func(i int) bool {
		// A tick falls in (prev, clock].
		p := s.phase[i]
		a := time.Duration(prev.UnixNano()) % s.interval
		b := time.Duration(s.clock.UnixNano()) % s.interval
		if a < b {
			return p > a && p <= b
		}
		return p > a || p <= b
	}
}

// step runs one rollout step, timed; done says the rollout has ended or
// halted.
func (s *sim) step(ctx context.Context) (st *rollout.State, done bool, err error) {
	start := time.Now()
	res, err := rollout.Step(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: s.root}, Now: s.now})
	if err != nil {
		return nil, false, err
	}
	s.recordStep(res, time.Since(start))
	return res.State, !res.State.Phase.Active() || res.State.Phase == rollout.PhaseHalted, nil
}

// recordStep files a step's wall time d under publishing or judging (and
// judging with every wave published).
func (s *sim) recordStep(res *rollout.StepResult, d time.Duration) {
	if res.Published != nil {
		s.publishTimes = append(s.publishTimes, d)
	} else if res.State.Phase == rollout.PhaseRunning || res.Decision.Action != rollout.ActionWait {
		s.judgeTimes = append(s.judgeTimes, d)
		if res.State.Current == len(res.State.Waves)-1 {
			s.fullJudgeTimes = append(s.fullJudgeTimes, d)
		}
	}
}

func publishedOffsets(st *rollout.State, t0 time.Time) []string {
	var out []string
	for _, w := range st.Waves {
		if w.PublishedAt != nil {
			out = append(out, fmt.Sprintf("wave %d +%s", w.Number, w.PublishedAt.Sub(t0)))
		}
	}
	return out
}
