// Command build benchmarks bento build against the two ways of building a
// fleet that need no bento: a sequential loop of one nix build per host
// (the original bento's method, the baseline to beat) and one nix build of
// every host's toplevel in a single process (the limit: Nix's own
// scheduler with no per-process overhead).
//
//	go run ./bench/build [-hosts 50] [-seconds 1] [-jobs 16]
//
// Every variant builds a fresh generation of the fleet (and fresh kernel,
// initrd and modules parts), so nothing is found already built in the
// store and each does the same work.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func main() {
	hosts := flag.Int("hosts", 50, "fixture hosts")
	seconds := flag.Float64("seconds", 1, "seconds each host's build sleeps (I/O-bound build)")
	jobs := flag.Int("jobs", 16, "bento build --jobs, and --max-jobs of the single-process build")
	skipSeq := flag.Bool("skip-sequential", false, "skip the (slow) sequential baseline")
	extra := flag.String("nix-config", "", "extra nix.conf lines for every variant")
	flag.Parse()
	if err := run(*hosts, *seconds, *jobs, *skipSeq, *extra); err != nil {
		fmt.Fprintln(os.Stderr, "bench/build:", err)
		os.Exit(1)
	}
}

func run(n int, seconds float64, jobs int, skipSeq bool, extra string) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "bento-bench-build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	env := []string{"NIX_CONFIG=" + fixture.NixConfig + extra + "\n"}
	r := &nix.Runner{Env: env}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	run := hex.EncodeToString(rnd[:])

	// fresh writes the fleet with a generation no run has built and
	// discovers it (discovery is not part of what is measured).
	fresh := func(variant string) ([]fleet.Host, error) {
		gen := variant + "-" + run
		dir := fmt.Sprintf("%s/%s", tmp, variant)
		err := fixture.Write(dir, fixture.Fleet{Hosts: fixture.Many("host", n, func(i int, h *fixture.Host) {
			h.BuildSeconds = seconds
			h.Generation = gen
			h.Kernel, h.Initrd, h.Modules = gen, gen, gen
		})})
		if err != nil {
			return nil, err
		}
		f, err := eval.Discover(ctx, r, eval.Options{Ref: dir})
		if err != nil {
			return nil, err
		}
		return f.Hosts, nil
	}

	fmt.Printf("bench/build: %d hosts, %gs I/O-bound build each, %d CPUs, nix max-jobs default per process unless said\n", n, seconds, runtime.NumCPU())
	if extra != "" {
		fmt.Printf("extra nix.conf: %q\n", extra)
	}

	var seq time.Duration
	if !skipSeq {
		hs, err := fresh("sequential")
		if err != nil {
			return err
		}
		start := time.Now()
		for _, h := range hs {
			if err := nixBuild(ctx, env, 0, h.Installable(builder.ToplevelSub)...); err != nil {
				return fmt.Errorf("sequential: host %s: %w", h.Name, err)
			}
		}
		seq = time.Since(start)
		fmt.Printf("  sequential loop of nix build (one per host):      %8.2fs\n", seq.Seconds())
	}

	hs, err := fresh("single")
	if err != nil {
		return err
	}
	var all []string
	for _, h := range hs {
		all = append(all, h.Installable(builder.ToplevelSub)...)
	}
	start := time.Now()
	if err := nixBuild(ctx, env, jobs, all...); err != nil {
		return fmt.Errorf("single process: %w", err)
	}
	single := time.Since(start)
	fmt.Printf("  one nix build of all toplevels, --max-jobs %-3d:    %8.2fs\n", jobs, single.Seconds())

	hs, err = fresh("bento")
	if err != nil {
		return err
	}
	start = time.Now()
	results, err := builder.Build(ctx, r, hs, builder.Options{Jobs: jobs, StateDir: tmp + "/state"})
	if err != nil {
		return err
	}
	bento := time.Since(start)
	for _, res := range results {
		if !res.OK() {
			return fmt.Errorf("bento: %v", res.Err)
		}
	}
	fmt.Printf("  bento build --jobs %-3d (nix's max-jobs per host):   %8.2fs\n", jobs, bento.Seconds())

	if !skipSeq {
		fmt.Printf("ratio bento / sequential loop:  %.3f (goal <= 0.10)\n", bento.Seconds()/seq.Seconds())
	}
	fmt.Printf("ratio bento / single process:   %.3f (goal <= 1.15)\n", bento.Seconds()/single.Seconds())
	return nil
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
