// Command secrets measures what secrets cost on both sides, against
// baselines measured in the same run:
//
//   - publish: Collect + Write of a host's secrets (hash, copy, chown,
//     chmod, fsync each file) vs. a plain copy of the same files with fsync;
//   - install: the agent's first install (temporary file, owner, mode,
//     fsync, rename) vs. writing the files in place with fsync;
//   - idle tick: the agent's check that every secret is in place (lstat,
//     hash) vs. reading the files, the least any check can do.
//
// Run as root (it chowns to nobody): go run ./bench/secrets [-n 200] [-size 4096]
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/secrets"
)

func main() {
	n := flag.Int("n", 200, "secrets per host")
	size := flag.Int("size", 4096, "bytes per secret")
	rounds := flag.Int("rounds", 5, "repetitions; the best is printed")
	flag.Parse()
	if *n < 1 || *size < 1 || *rounds < 1 {
		log.Fatal("-n, -size and -rounds must be at least 1")
	}
	if os.Geteuid() != 0 {
		log.Fatal("run as root: the benchmark chowns secrets to nobody, as a deploy and an agent do")
	}
	work, err := os.MkdirTemp("", "bento-bench-secrets-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)

	b := &bench{ctx: context.Background(), work: work, src: filepath.Join(work, "secrets"), n: *n, size: *size, rounds: *rounds}
	b.writeSources()
	owner, err := secrets.LookupOwner("nobody")
	must(err)
	b.owner = owner
	b.measurePublish()
	b.measureInstall()
	b.measureIdle()
	b.report()
}

// bench is the state the phases share: the work directory, the host's
// secrets under src, and each phase's best time and its baseline's.
type bench struct {
	ctx              context.Context
	work, src        string
	n, size, rounds  int
	owner            secrets.Owner
	files            []manifest.File
	inst             *secrets.Installer
	state            secrets.State // after the last first install
	target           string        // where the last first install went
	pub, pubBase     time.Duration
	first, firstBase time.Duration
	idle, idleBase   time.Duration
}

// writeSources writes n random secrets of size bytes for the host.
func (b *bench) writeSources() {
	buf := make([]byte, b.size)
	for i := 0; i < b.n; i++ {
		rand.Read(buf)
		p := b.source(i)
		must(os.MkdirAll(filepath.Dir(p), 0o700))
		must(os.WriteFile(p, buf, 0o600))
	}
}

func (b *bench) source(i int) string { return filepath.Join(b.src, "host", "s"+strconv.Itoa(i)) }

// best runs f rounds times (with the round's number) and returns the
// shortest time.
func (b *bench) best(f func(i int)) time.Duration {
	var best time.Duration
	for r := 0; r < b.rounds; r++ {
		start := time.Now()
		f(r)
		if d := time.Since(start); best == 0 || d < best {
			best = d
		}
	}
	return best
}

// copyAll copies every source into dst, made with mode, as the baselines do.
func (b *bench) copyAll(dst string, mode os.FileMode) {
	must(os.MkdirAll(dst, mode))
	for i := 0; i < b.n; i++ {
		must(copySync(b.source(i), filepath.Join(dst, "s"+strconv.Itoa(i))))
	}
}

func (b *bench) measurePublish() {
	b.pub = b.best(func(r int) {
		files, err := secrets.Collect(b.src, "host")
		must(err)
		dst := filepath.Join(b.work, "pub", strconv.Itoa(r))
		must(os.MkdirAll(dst, 0o700))
		must(secrets.Write(b.ctx, dst, b.src, "host", files, b.owner))
	})
	b.pubBase = b.best(func(r int) {
		b.copyAll(filepath.Join(b.work, "pubbase", strconv.Itoa(r)), 0o700)
	})
}

func (b *bench) specsFor(dir string) map[string]secrets.Spec {
	specs := map[string]secrets.Spec{}
	for _, f := range b.files {
		specs[f.Path] = secrets.Spec{Path: filepath.Join(dir, f.Path), Owner: "nobody", Mode: "0400"}
	}
	return specs
}

// measureInstall times the first install, as the agent does from its held
// copy.
func (b *bench) measureInstall() {
	files, err := secrets.Collect(b.src, "host")
	must(err)
	b.files = files
	b.inst = &secrets.Installer{}
	b.first = b.best(func(r int) {
		b.target = filepath.Join(b.work, "run", strconv.Itoa(r))
		o, err := b.inst.Install(b.ctx, filepath.Join(b.src, "host"), b.files, b.specsFor(b.target), secrets.State{})
		must(err)
		if len(o.Errors) > 0 {
			log.Fatal(o.Errors)
		}
		b.state = o.State
	})
	b.firstBase = b.best(func(r int) {
		b.copyAll(filepath.Join(b.work, "runbase", strconv.Itoa(r)), 0o751)
	})
}

// measureIdle times the check of the last first install's secrets.
func (b *bench) measureIdle() {
	specs := b.specsFor(b.target)
	b.idle = b.best(func(int) {
		o, err := b.inst.Install(b.ctx, filepath.Join(b.src, "host"), b.files, specs, b.state)
		must(err)
		if len(o.Changed) > 0 {
			log.Fatalf("idle install rewrote %d secrets", len(o.Changed))
		}
	})
	b.idleBase = b.best(func(int) {
		for _, f := range b.files {
			data, err := os.ReadFile(filepath.Join(b.target, f.Path))
			must(err)
			_ = data
		}
	})
}

func (b *bench) report() {
	fmt.Printf("%d secrets of %d bytes, best of %d rounds\n", b.n, b.size, b.rounds)
	row := func(what string, d, base time.Duration, baseWhat string) {
		fmt.Printf("%-34s %10s   baseline %-34s %10s   ratio %.2f\n", what, d.Round(time.Microsecond), baseWhat, base.Round(time.Microsecond), float64(d)/float64(base))
	}
	row("publish (collect+write, owned)", b.pub, b.pubBase, "(copy + fsync)")
	row("first install (atomic, owned)", b.first, b.firstBase, "(copy + fsync in place)")
	row("idle tick (all in place)", b.idle, b.idleBase, "(read every file)")
	n := time.Duration(b.n)
	fmt.Printf("per secret: publish %s, first install %s, idle check %s\n",
		(b.pub / n).Round(time.Microsecond), (b.first / n).Round(time.Microsecond), (b.idle / n).Round(time.Microsecond))
}

func copySync(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o400)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
