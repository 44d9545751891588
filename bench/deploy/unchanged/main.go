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
	"github.com/bento-nix/bento/internal/benchtb"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/fleet"
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

func run(n, rounds int, bin string, original bool) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "bento-bench-unchanged-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if bin == "" {
		bin = filepath.Join(tmp, "bento")
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/bento").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/bento (run from the module root, or pass -bento): %v: %s", err, out)
		}
	}
	dir := filepath.Join(tmp, "fleet")
	hs := fixture.Many("host", n, func(i int, h *fixture.Host) { h.Bento = &fixture.Bento{Enable: true} })
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hs, Git: true}); err != nil {
		return err
	}
	env := append(os.Environ(), fixture.Env()...)
	root, state := filepath.Join(tmp, "chroot"), filepath.Join(tmp, "state")
	deploy := func(extra ...string) error {
		args := append([]string{"deploy", "--flake", dir, "--chroot-root", root, "--state-dir", state, "--no-user-check", "--json"}, extra...)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("bento %s: %v: %s", strings.Join(args, " "), err, tail(string(out)))
		}
		return nil
	}
	fmt.Printf("bench/deploy/unchanged: %d hosts, %d CPUs, %d rounds (medians), load average %s\n", n, runtime.NumCPU(), rounds, benchtb.LoadAvg())
	start := time.Now()
	if err := deploy(); err != nil {
		return fmt.Errorf("first deploy: %w", err)
	}
	fmt.Printf("  first deploy (builds every host, untimed figure): %.2fs\n", time.Since(start).Seconds())

	type variant struct {
		name string
		f    func() error
		durs []time.Duration
	}
	vs := []*variant{
		{name: "bento deploy, unchanged fleet (defaults)", f: func() error { return deploy() }},
		{name: "bento deploy --no-build, unchanged fleet", f: func() error { return deploy("--no-build") }},
	}
	if original {
		orig := filepath.Join(tmp, "original")
		vs = append(vs, &variant{name: "original: per host copy + nix build + rsync", f: func() error {
			for _, h := range hs {
				cp := filepath.Join(orig, "copies", h.Name)
				if err := os.MkdirAll(cp, 0o755); err != nil {
					return err
				}
				for _, c := range [][]string{
					{"rsync", "-a", "--delete", "--exclude", ".git", dir + "/", cp + "/"},
					{"nix", "build", "--no-link", "path:" + cp + "#" + fleet.ConfigAttr(h.Name) + "." + builder.ToplevelSub},
				} {
					cmd := exec.CommandContext(ctx, c[0], c[1:]...)
					cmd.Env = env
					if out, err := cmd.CombinedOutput(); err != nil {
						return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, tail(string(out)))
					}
				}
			}
			return nil
		}})
		if _, err := exec.LookPath("rsync"); err != nil {
			return fmt.Errorf("the original's redeploy needs rsync (apt-get install rsync), or pass -original=false")
		}
		// Its first run copies and builds; not measured.
		if err := vs[len(vs)-1].f(); err != nil {
			return err
		}
	}
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
	return nil
}

func tail(s string) string {
	if len(s) > 2000 {
		return "…" + s[len(s)-2000:]
	}
	return s
}
