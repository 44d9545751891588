// Command unchanged measures an unchanged redeploy as a user runs it: the
// real bento binary, bento deploy of a fleet that was deployed already
// and has not changed since (discovery, the hosts' derivations, the build
// step that finds nothing to realise, publication that writes nothing),
// against the same with --no-build (discovery and publication only), and
// against the original bento's way, re-created: for each host, a copy of
// the flake, nix build of its (already built) system, rsync -a --delete
// of the flake into its directory. All in the same run; medians of
// several rounds, in rotating order.
//
// bench/deploy measures publication alone; this is the whole command.
//
//	go run ./bench/deploy/unchanged [-hosts 50] [-rounds 5]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/fixture"
)

func main() {
	hosts := flag.Int("hosts", 50, "hosts in the fleet")
	rounds := flag.Int("rounds", 5, "rounds (medians)")
	bin := flag.String("bento", "", "the bento binary (default: go build ./cmd/bento, from the module root)")
	original := flag.Bool("original", true, "also measure the original's unchanged redeploy")
	flag.Parse()
	if err := run(*hosts, *rounds, *bin, *original); err != nil {
		fmt.Fprintln(os.Stderr, "bench/deploy/unchanged:", err)
		os.Exit(1)
	}
}

// bench is what the variants share: the fleet, the bento binary and the
// directories it deploys to.
type bench struct {
	ctx         context.Context
	tmp         string
	bin         string
	dir         string
	hs          []fixture.Host
	env         []string
	root, state string
}

type variant struct {
	name string
	f    func() error
	durs []time.Duration
}

func run(n, rounds int, bin string, original bool) error {
	tmp, err := os.MkdirTemp("", "bento-bench-unchanged-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b, err := setUp(tmp, n, bin)
	if err != nil {
		return err
	}
	fmt.Printf("bench/deploy/unchanged: %d hosts, %d CPUs, %d rounds (medians), load average %s\n", n, runtime.NumCPU(), rounds, benchtb.LoadAvg())
	start := time.Now()
	if err := b.deploy(); err != nil {
		return fmt.Errorf("first deploy: %w", err)
	}
	fmt.Printf("  first deploy (builds every host, untimed figure): %.2fs\n", time.Since(start).Seconds())

	vs := []*variant{
		{name: "bento deploy, unchanged fleet (defaults)", f: func() error { return b.deploy() }},
		{name: "bento deploy --no-build, unchanged fleet", f: func() error { return b.deploy("--no-build") }},
	}
	if original {
		v, err := b.originalVariant()
		if err != nil {
			return err
		}
		vs = append(vs, v)
	}
	if err := measure(vs, rounds); err != nil {
		return err
	}
	report(vs, n)
	return nil
}

// setUp builds bento unless bin names it, and writes the fleet.
func setUp(tmp string, n int, bin string) (*bench, error) {
	ctx := context.Background()
	if bin == "" {
		bin = filepath.Join(tmp, "bento")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/bento").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/bento (run from the module root, or pass -bento): %v: %s", err, out)
		}
	}
	dir := filepath.Join(tmp, "fleet")
	hs := fixture.Many("host", n, func(i int, h *fixture.Host) { h.Bento = &fixture.Bento{Enable: true} })
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hs, Git: true}); err != nil {
		return nil, err
	}
	return &bench{ctx: ctx, tmp: tmp, bin: bin, dir: dir, hs: hs, env: append(os.Environ(), fixture.Env()...),
		root: filepath.Join(tmp, "chroot"), state: filepath.Join(tmp, "state")}, nil
}

// deploy runs bento deploy of the fleet, with extra flags.
func (b *bench) deploy(extra ...string) error {
	args := append([]string{"deploy", "--flake", b.dir, "--chroot-root", b.root, "--state-dir", b.state, "--no-user-check", "--json"}, extra...)
	cmd := exec.CommandContext(b.ctx, b.bin, args...)
	cmd.Env = b.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("bento %s: %v: %s", strings.Join(args, " "), err, tail(string(out)))
	}
	return nil
}

// originalVariant is the original's redeploy, after its first run (which
// copies and builds, not measured).
func (b *bench) originalVariant() (*variant, error) {
	v := &variant{name: "original: per host copy + nix build + rsync", f: b.originalRedeploy}
	if _, err := exec.LookPath("rsync"); err != nil {
		return nil, fmt.Errorf("the original's redeploy needs rsync (apt-get install rsync), or pass -original=false")
	}
	// Its first run copies and builds; not measured.
	if err := v.f(); err != nil {
		return nil, err
	}
	return v, nil
}

// originalRedeploy is the original's way: for each host, a copy of the
// flake and nix build of its system.
func (b *bench) originalRedeploy() error {
	orig := filepath.Join(b.tmp, "original")
	for _, h := range b.hs {
		cp := filepath.Join(orig, "copies", h.Name)
		if err := os.MkdirAll(cp, 0o755); err != nil {
			return err
		}
		for _, c := range [][]string{
			{"rsync", "-a", "--delete", "--exclude", ".git", b.dir + "/", cp + "/"},
			{"nix", "build", "--no-link", "path:" + cp + "#" + fleet.ConfigAttr(h.Name) + "." + builder.ToplevelSub},
		} {
			cmd := exec.CommandContext(b.ctx, c[0], c[1:]...)
			cmd.Env = b.env
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, tail(string(out)))
			}
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
			start := time.Now()
			if err := v.f(); err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			v.durs = append(v.durs, time.Since(start))
		}
	}
	return nil
}

// report prints the medians and their ratios to --no-build, vs[1], and
// the line for bench/table.
func report(vs []*variant, n int) {
	base := benchtb.Median(vs[1].durs)
	for _, v := range vs {
		m := benchtb.Median(v.durs)
		fmt.Printf("  %-46s %6.3fs  %5.2fx of --no-build  rounds: %s\n", v.name, m.Seconds(), m.Seconds()/base.Seconds(), benchtb.Rounds(v.durs))
	}
	fmt.Printf("load average at the end: %s\n", benchtb.LoadAvg())
	anchor := fmt.Sprintf("--no-build %.2fs", base.Seconds())
	if len(vs) > 2 {
		anchor += fmt.Sprintf(", the original %.1fs", benchtb.Median(vs[2].durs).Seconds())
	}
	// One line for bench/table: figure, anchor, bento, goal.
	fmt.Printf("table: unchanged redeploy, %d hosts\t%s\t%.2fs with defaults\t<= 0.5s\n", n, anchor, benchtb.Median(vs[0].durs).Seconds())
}

func tail(s string) string {
	if len(s) > 2000 {
		return "…" + s[len(s)-2000:]
	}
	return s
}
