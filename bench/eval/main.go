// Command eval benchmarks fleet discovery on a generated fleet: bento's
// chunked parallel discovery against one sequential nix eval of every host
// (the baseline) and against what the original bento ran, nix flake show
// --json three times per command. All three run in the same process, on the
// same fleet, one after the other, and the ratios are printed.
//
//	go run ./bench/eval -hosts 300 -cost 200000
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"time"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func main() {
	hosts := flag.Int("hosts", 300, "hosts in the generated fleet")
	cost := flag.Int("cost", 200000, "evaluation cost per host (length of a folded list)")
	jobs := flag.Int("jobs", runtime.NumCPU(), "bento's --eval-jobs")
	chunk := flag.Int("chunk", 0, "bento's --eval-chunk (0: automatic)")
	flag.Parse()
	if err := run(*hosts, *cost, *jobs, *chunk); err != nil {
		fmt.Fprintln(os.Stderr, "bench/eval:", err)
		os.Exit(1)
	}
}

func run(n, cost, jobs, chunk int) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "bento-bench-eval-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fl := fixture.Fleet{Hosts: fixture.Many("host", n, func(i int, h *fixture.Host) { h.EvalCost = cost })}
	if err := fixture.Write(dir, fl); err != nil {
		return err
	}
	r := &nix.Runner{Env: fixture.Env()}
	fmt.Printf("fleet: %d hosts, evaluation cost %d per host, %d CPUs\n", n, cost, runtime.NumCPU())

	// Warm-up: copy the flake into the store once so no variant pays it alone.
	if _, err := r.Output(ctx, "", "eval", "--json", dir+"#nixosConfigurations", "--apply", "builtins.attrNames"); err != nil {
		return err
	}

	seq, err := timed(func() error {
		_, err := eval.Discover(ctx, r, eval.Options{Ref: dir, Jobs: 1, ChunkSize: n})
		return err
	})
	if err != nil {
		return fmt.Errorf("sequential: %w", err)
	}
	var found int
	par, err := timed(func() error {
		f, err := eval.Discover(ctx, r, eval.Options{Ref: dir, Jobs: jobs, ChunkSize: chunk})
		if f != nil {
			found = len(f.Hosts)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("bento: %w", err)
	}
	if found != n {
		return fmt.Errorf("bento discovered %d hosts, want %d", found, n)
	}
	// One chunk per worker: fewer, larger nix processes, which the default
	// avoids for real fleets (a NixOS evaluation holds hundreds of MB).
	whole := (n + jobs - 1) / jobs
	big, err := timed(func() error {
		_, err := eval.Discover(ctx, r, eval.Options{Ref: dir, Jobs: jobs, ChunkSize: whole})
		return err
	})
	if err != nil {
		return fmt.Errorf("bento one chunk per job: %w", err)
	}
	show, err := timed(func() error {
		for range 3 {
			cmd := exec.CommandContext(ctx, "nix", "flake", "show", "--json", dir)
			cmd.Env = append(os.Environ(), fixture.Env()...)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("nix flake show: %w", err)
	}
	fmt.Printf("%-48s %8.2fs  1.00x (baseline)\n", "one sequential nix eval of every host", seq.Seconds())
	fmt.Printf("%-48s %8.2fs  %.2fx\n", fmt.Sprintf("bento discovery (--eval-jobs %d)", jobs), par.Seconds(), par.Seconds()/seq.Seconds())
	fmt.Printf("%-48s %8.2fs  %.2fx\n", fmt.Sprintf("bento discovery (--eval-jobs %d --eval-chunk %d)", jobs, whole), big.Seconds(), big.Seconds()/seq.Seconds())
	fmt.Printf("%-48s %8.2fs  %.2fx (lists names only, no options)\n", "nix flake show --json x3 (original bento)", show.Seconds(), show.Seconds()/seq.Seconds())
	return nil
}

func timed(f func() error) (time.Duration, error) {
	start := time.Now()
	err := f()
	return time.Since(start), err
}
