// Command build benchmarks a first build of a fleet with bento's default
// flags against two ways of building it that need no bento, measured in
// the same run:
//
//   - the original bento's method, re-created (its shell script is not in
//     this project): for each host in turn, a copy of the flake of its own
//     and one nix build of that host's toplevel from it (the script copied
//     the flake into each host's chroot and ran nixos-rebuild build there;
//     nixos-rebuild is replaced by the same nix build);
//   - the limit: one nix build of every host's toplevel in a single
//     process, with --max-jobs set to the number of Nix build users (more
//     would only poll for a free build user), Nix's own scheduler with no
//     per-process overhead.
//
// bento's time includes discovery (as a bento deploy's would) and its
// chunked evaluation; the others evaluate inside their nix build.
//
//	go run ./bench/build [-hosts 50] [-seconds 1] [-rounds 3] [-seq-rounds 1]
//
// Every variant of every round builds a fresh generation of the fleet (and
// fresh kernel, initrd and modules parts), so nothing is found already
// built in the store and each does the same work. Medians are printed.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func main() {
	hosts := flag.Int("hosts", 50, "fixture hosts")
	seconds := flag.Float64("seconds", 1, "seconds each host's build sleeps (I/O-bound build)")
	rounds := flag.Int("rounds", 3, "rounds of bento and of the single-process limit (medians)")
	seqRounds := flag.Int("seq-rounds", 1, "rounds of the (slow: hosts × seconds) original loop; 0 skips it")
	jobs := flag.Int("jobs", 0, "bento --jobs (0: bento's default)")
	extra := flag.String("nix-config", "", "extra nix.conf lines for every variant")
	split := flag.Bool("split", false, "also measure bento with the derivations evaluated by the build, not discovery")
	flag.Parse()
	if err := run(*hosts, *seconds, *rounds, *seqRounds, *jobs, *extra, *split); err != nil {
		fmt.Fprintln(os.Stderr, "bench/build:", err)
		os.Exit(1)
	}
}

// bench is what the phases share: the fleet's parameters, the Nix
// environment, the job counts and the durations measured so far.
type bench struct {
	ctx       context.Context
	tmp       string
	n         int
	seconds   float64
	split     bool
	env       []string
	r         *nix.Runner
	nonce     string
	jobs      int
	why       string
	limitJobs int

	seq, single, bento, bentoSplit []time.Duration
}

func run(n int, seconds float64, rounds, seqRounds, jobs int, extra string, split bool) error {
	tmp, err := os.MkdirTemp("", "bento-bench-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := setUp(tmp, n, seconds, rounds, seqRounds, jobs, extra, split)
	for round := range max(rounds, seqRounds) {
		if err := b.round(round, rounds, seqRounds); err != nil {
			return err
		}
	}
	b.report()
	return nil
}

// setUp works out the job counts and prints the header line.
func setUp(tmp string, n int, seconds float64, rounds, seqRounds, jobs int, extra string, split bool) *bench {
	env := []string{"NIX_CONFIG=" + fixture.NixConfig + extra + "\n"}
	b := &bench{ctx: context.Background(), tmp: tmp, n: n, seconds: seconds, split: split, env: env, r: &nix.Runner{Env: env}}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	b.nonce = hex.EncodeToString(rnd[:])
	jenv := builder.SystemJobsEnv()
	jenv.NixConfig = fixture.NixConfig + extra
	b.jobs, b.why = jobs, "--jobs given"
	if jobs == 0 {
		b.jobs, b.why = builder.DefaultJobs(jenv)
	}
	group, users, _ := builder.BuildUsers(jenv)
	b.limitJobs = users
	if b.limitJobs == 0 {
		b.limitJobs = 2 * runtime.NumCPU()
	}
	fmt.Printf("bench/build: %d hosts, %gs I/O-bound build each, %d CPUs, Nix build users: %d (group %q), %d rounds (original loop: %d), load average %s\n",
		n, seconds, runtime.NumCPU(), users, group, rounds, seqRounds, benchtb.LoadAvg())
	return b
}

// round runs one round of every variant: the original loop while round <
// seqRounds, the limit and bento while round < rounds.
func (b *bench) round(round, rounds, seqRounds int) error {
	if round < seqRounds {
		if err := b.original(round); err != nil {
			return err
		}
	}
	if round >= rounds {
		return nil
	}
	if err := b.limit(round); err != nil {
		return err
	}
	if err := b.bentoDefaults(round); err != nil {
		return err
	}
	if !b.split {
		return nil
	}
	return b.bentoSplitRound(round)
}

// fresh writes the fleet with a generation no run has built.
func (b *bench) fresh(variant string, round int) (string, error) {
	gen := fmt.Sprintf("%s-%d-%s", variant, round, b.nonce)
	dir := filepath.Join(b.tmp, fmt.Sprintf("%s-%d", variant, round))
	return dir, fixture.Write(dir, fixture.Fleet{Hosts: fixture.Many("host", b.n, func(i int, h *fixture.Host) {
		h.Bento = &fixture.Bento{Enable: true}
		h.BuildSeconds = b.seconds
		h.Generation = gen
		h.Kernel, h.Initrd, h.Modules = gen, gen, gen
	})})
}

func (b *bench) names(dir string) ([]fleet.Host, error) {
	f, err := eval.Discover(b.ctx, b.r, eval.Options{Ref: dir})
	if err != nil {
		return nil, err
	}
	return f.Hosts, nil
}

// original times the original's loop: for each host, a copy of the flake
// and one nix build.
func (b *bench) original(round int) error {
	dir, err := b.fresh("original", round)
	if err != nil {
		return err
	}
	hs, err := b.names(dir)
	if err != nil {
		return err
	}
	start := time.Now()
	for _, h := range hs {
		// The original script's per-host copy of the flake.
		cp := filepath.Join(b.tmp, fmt.Sprintf("copy-%d", round), h.Name)
		if err := os.MkdirAll(cp, 0o755); err != nil {
			return err
		}
		if out, err := exec.CommandContext(b.ctx, "cp", "-a", dir+"/.", cp+"/").CombinedOutput(); err != nil {
			return fmt.Errorf("copy of the flake: %v: %s", err, out)
		}
		if err := nixBuild(b.ctx, b.env, 0, "path:"+cp+"#"+fleet.ConfigAttr(h.Name)+"."+builder.ToplevelSub); err != nil {
			return fmt.Errorf("original loop: host %s: %w", h.Name, err)
		}
	}
	b.seq = append(b.seq, time.Since(start))
	return nil
}

// limit times one nix build of every host's toplevel.
func (b *bench) limit(round int) error {
	dir, err := b.fresh("single", round)
	if err != nil {
		return err
	}
	hs, err := b.names(dir)
	if err != nil {
		return err
	}
	var all []string
	for _, h := range hs {
		all = append(all, h.Installable(builder.ToplevelSub)...)
	}
	start := time.Now()
	if err := nixBuild(b.ctx, b.env, b.limitJobs, all...); err != nil {
		return fmt.Errorf("single process: %w", err)
	}
	b.single = append(b.single, time.Since(start))
	return nil
}

// bentoDefaults times bento's discovery and build with its defaults.
func (b *bench) bentoDefaults(round int) error {
	dir, err := b.fresh("bento", round)
	if err != nil {
		return err
	}
	// As bento build without a host selection does: discovery
	// instantiates the systems, the build reuses them.
	start := time.Now()
	var mu sync.Mutex
	drvs := map[string]string{}
	f, err := eval.Discover(b.ctx, b.r, eval.Options{Ref: dir, DrvPath: func(h, d string) { mu.Lock(); drvs[h] = d; mu.Unlock() }})
	if err != nil {
		return err
	}
	results, err := builder.Build(b.ctx, b.r, f.Hosts, builder.Options{Jobs: b.jobs, StateDir: filepath.Join(b.tmp, "state"), DrvPaths: drvs})
	if err != nil {
		return err
	}
	b.bento = append(b.bento, time.Since(start))
	for _, res := range results {
		if !res.OK() || res.Unchanged {
			return fmt.Errorf("bento: host %s: unchanged %v, %v", res.Host, res.Unchanged, res.Err)
		}
	}
	return nil
}

// bentoSplitRound times bento with the derivations evaluated by the build.
func (b *bench) bentoSplitRound(round int) error {
	// As bento build with a host selection does: discovery reads the
	// options only, the build evaluates the derivations in chunks and
	// starts each chunk's builds as it ends.
	dir, err := b.fresh("bento-split", round)
	if err != nil {
		return err
	}
	start := time.Now()
	hs, err := b.names(dir)
	if err != nil {
		return err
	}
	results, err := builder.Build(b.ctx, b.r, hs, builder.Options{Jobs: b.jobs, StateDir: filepath.Join(b.tmp, "state")})
	if err != nil {
		return err
	}
	b.bentoSplit = append(b.bentoSplit, time.Since(start))
	for _, res := range results {
		if !res.OK() {
			return fmt.Errorf("bento (split): host %s: %v", res.Host, res.Err)
		}
	}
	return nil
}

func row(name string, ds []time.Duration) {
	fmt.Printf("  %-58s %7.2fs  rounds: %s\n", name, benchtb.Median(ds).Seconds(), benchtb.Rounds(ds))
}

// report prints the medians, the ratios and the line for bench/table.
func (b *bench) report() {
	if len(b.seq) > 0 {
		row("original: per host, a copy of the flake and one nix build", b.seq)
	}
	row(fmt.Sprintf("limit: one nix build of all toplevels, --max-jobs %d", b.limitJobs), b.single)
	label := fmt.Sprintf("bento discovery + build, defaults (--jobs %d: %s)", b.jobs, b.why)
	if b.why == "--jobs given" {
		label = fmt.Sprintf("bento discovery + build, --jobs %d", b.jobs)
	}
	row(label, b.bento)
	if b.split {
		row("bento, derivations evaluated by the build (as with a selection)", b.bentoSplit)
	}
	if len(b.seq) > 0 {
		fmt.Printf("ratio bento / original:  %.3f\n", benchtb.Median(b.bento).Seconds()/benchtb.Median(b.seq).Seconds())
	}
	fmt.Printf("ratio bento / limit:     %.3f\n", benchtb.Median(b.bento).Seconds()/benchtb.Median(b.single).Seconds())
	if len(b.seq) > 0 {
		// One line for bench/table: figure, anchor, bento, goal.
		fmt.Printf("table: first deploy, %d hosts x %gs build\tthe original's loop %.1fs\t%.2fx with defaults (%.2fx of one nix build)\t<= 0.1x\n",
			b.n, b.seconds, benchtb.Median(b.seq).Seconds(), benchtb.Median(b.bento).Seconds()/benchtb.Median(b.seq).Seconds(), benchtb.Median(b.bento).Seconds()/benchtb.Median(b.single).Seconds())
	}
	fmt.Printf("load average at the end: %s\n", benchtb.LoadAvg())
}

// nixBuild runs one nix build of installables, without out links, with
// --max-jobs when maxJobs > 0.
func nixBuild(ctx context.Context, env []string, maxJobs int, installables ...string) error {
	args := []string{"build", "--no-link"}
	if maxJobs > 0 {
		// Same lock polling as bento's processes, so that the limit is
		// not handicapped when it waits for a free build user.
		args = append(args, "--max-jobs", fmt.Sprint(maxJobs), "--option", "build-poll-interval", "1")
	}
	cmd := exec.CommandContext(ctx, "nix", append(args, installables...)...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, nix.Summarize(string(out)))
	}
	return nil
}
