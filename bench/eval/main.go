// Command eval benchmarks fleet discovery on a generated fleet: bento's
// chunked parallel discovery with its default flags against one
// sequential nix eval of every host (the baseline: one nix process, the
// same expression), and optionally against what the original bento ran,
// nix flake show --json three times per command. Every variant runs in
// every round, in the same process, on the same fleet, in an order that
// rotates between rounds; the medians and their ratios are printed.
//
//	go run ./bench/eval [-hosts 300] [-cost 200000] [-rounds 3] [-show]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func main() {
	hosts := flag.Int("hosts", 300, "hosts in the generated fleet")
	cost := flag.Int("cost", 200000, "evaluation cost per host (length of a folded list)")
	rounds := flag.Int("rounds", 3, "rounds; medians are printed")
	chunk := flag.Int("chunk", 0, "also measure bento with this --eval-chunk (0: skip)")
	show := flag.Bool("show", false, "also measure nix flake show --json x3 (the original bento's listing)")
	flag.Parse()
	if err := run(*hosts, *cost, *rounds, *chunk, *show); err != nil {
		fmt.Fprintln(os.Stderr, "bench/eval:", err)
		os.Exit(1)
	}
}

type variant struct {
	name string
	note string
	f    func() error
	durs []time.Duration
	cpu  []time.Duration
}

// childCPU is the user and system time of every waited-for child so far:
// the nix processes' CPU time, which load from other processes on the
// machine does not inflate the way it inflates wall time.
func childCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// bench is what the variants share: the fleet, the runner, and the
// chunks bento's default discovery started in its last run.
type bench struct {
	ctx    context.Context
	dir    string
	n      int
	r      *nix.Runner
	mu     sync.Mutex
	chunks []int
}

func run(n, cost, rounds, chunk int, show bool) error {
	dir, err := os.MkdirTemp("", "bento-bench-eval-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b, err := setUp(dir, n, cost, rounds)
	if err != nil {
		return err
	}
	load0 := benchtb.LoadAvg()
	vs := b.variants(chunk, show)
	if err := measure(vs, rounds); err != nil {
		return err
	}
	b.report(vs, load0)
	return nil
}

// setUp writes the fleet, prints the header line and copies the flake
// into the store.
func setUp(dir string, n, cost, rounds int) (*bench, error) {
	fl := fixture.Fleet{Hosts: fixture.Many("host", n, func(i int, h *fixture.Host) { h.EvalCost = cost })}
	if err := fixture.Write(dir, fl); err != nil {
		return nil, err
	}
	b := &bench{ctx: context.Background(), dir: dir, n: n, r: &nix.Runner{Env: fixture.Env()}}
	fmt.Printf("bench/eval: %d hosts, evaluation cost %d per host, %d CPUs, %d rounds (medians), budget by default %s (3/4 of MemAvailable)\n",
		n, cost, runtime.NumCPU(), rounds, bytesize.Format(eval.SystemBudget()))

	// Warm-up: copy the flake into the store once so no variant pays it alone.
	if _, err := b.r.Output(b.ctx, "", "eval", "--json", dir+"#nixosConfigurations", "--apply", "builtins.attrNames"); err != nil {
		return nil, err
	}
	return b, nil
}

// variants are the measured ones, the baseline first and bento's defaults
// second.
func (b *bench) variants(chunk int, show bool) []*variant {
	vs := []*variant{
		{name: "one sequential nix eval of every host", note: "baseline", f: func() error {
			return b.discover(eval.Options{Jobs: 1, ChunkSize: b.n})
		}},
		{name: fmt.Sprintf("bento discovery, defaults (--eval-jobs %d)", runtime.NumCPU()), f: b.discoverDefaults},
	}
	if chunk > 0 {
		vs = append(vs, &variant{name: fmt.Sprintf("bento discovery, --eval-chunk %d", chunk), f: func() error {
			return b.discover(eval.Options{ChunkSize: chunk})
		}})
	}
	if show {
		vs = append(vs, &variant{name: "nix flake show --json x3 (original bento)", note: "lists names only, no options", f: b.flakeShow})
	}
	return vs
}

func (b *bench) discover(opts eval.Options) error {
	opts.Ref = b.dir
	f, err := eval.Discover(b.ctx, b.r, opts)
	if err != nil {
		return err
	}
	if len(f.Hosts) != b.n {
		return fmt.Errorf("discovered %d hosts, want %d", len(f.Hosts), b.n)
	}
	return nil
}

// discoverDefaults is bento's discovery with its defaults, recording the
// sizes of the chunks it starts.
func (b *bench) discoverDefaults() error {
	b.mu.Lock()
	b.chunks = nil
	b.mu.Unlock()
	return b.discover(eval.Options{ChunkStarted: func(names []string) {
		b.mu.Lock()
		b.chunks = append(b.chunks, len(names))
		b.mu.Unlock()
	}})
}

// flakeShow is the original bento's listing: nix flake show --json, three
// times.
func (b *bench) flakeShow() error {
	for range 3 {
		cmd := exec.CommandContext(b.ctx, "nix", "flake", "show", "--json", b.dir)
		cmd.Env = append(os.Environ(), fixture.Env()...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
	}
	return nil
}

// measure runs every variant in every round, in an order that rotates
// between rounds.
func measure(vs []*variant, rounds int) error {
	for round := range rounds {
		for k := range vs {
			v := vs[(k+round)%len(vs)]
			start, cpu := time.Now(), childCPU()
			if err := v.f(); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			v.durs = append(v.durs, time.Since(start))
			v.cpu = append(v.cpu, childCPU()-cpu)
		}
	}
	return nil
}

// report prints the medians and their ratios to the baseline, vs[0].
func (b *bench) report(vs []*variant, load0 string) {
	base := benchtb.Median(vs[0].durs)
	for _, v := range vs {
		m := benchtb.Median(v.durs)
		note := v.note
		if note != "" {
			note = " (" + note + ")"
		}
		fmt.Printf("  %-46s %7.2fs  %.2fx%s  cpu %.2fs  rounds: %s\n", v.name, m.Seconds(), m.Seconds()/base.Seconds(), note, benchtb.Median(v.cpu).Seconds(), benchtb.Rounds(v.durs))
	}
	fmt.Printf("load average before: %s, after: %s (wall-time ratios need idle CPUs; compare the cpu column under load)\n", load0, benchtb.LoadAvg())
	fmt.Printf("bento's default chunks (last round): %v hosts\n", b.chunks)
	// One line for bench/table: figure, anchor, bento, goal.
	fmt.Printf("table: discovery, %d hosts\tone sequential nix eval %.1fs\t%.2fx with defaults\t<= 0.6x\n",
		b.n, base.Seconds(), benchtb.Median(vs[1].durs).Seconds()/base.Seconds())
}
