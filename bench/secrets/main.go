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

	"github.com/bento-nix/bento/secrets"
)

func main() {
	n := flag.Int("n", 200, "secrets per host")
	size := flag.Int("size", 4096, "bytes per secret")
	rounds := flag.Int("rounds", 5, "repetitions; the best is printed")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("run as root: the benchmark chowns secrets to nobody, as a deploy and an agent do")
	}
	ctx := context.Background()
	work, err := os.MkdirTemp("", "bento-bench-secrets-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)

	src := filepath.Join(work, "secrets")
	buf := make([]byte, *size)
	for i := 0; i < *n; i++ {
		rand.Read(buf)
		p := filepath.Join(src, "host", "s"+strconv.Itoa(i))
		must(os.MkdirAll(filepath.Dir(p), 0o700))
		must(os.WriteFile(p, buf, 0o600))
	}
	owner, err := secrets.LookupOwner("nobody")
	must(err)

	best := func(f func(i int)) time.Duration {
		var b time.Duration
		for r := 0; r < *rounds; r++ {
			start := time.Now()
			f(r)
			if d := time.Since(start); b == 0 || d < b {
				b = d
			}
		}
		return b
	}

	// Publish.
	pub := best(func(r int) {
		files, err := secrets.Collect(src, "host")
		must(err)
		dst := filepath.Join(work, "pub", strconv.Itoa(r))
		must(os.MkdirAll(dst, 0o700))
		must(secrets.Write(ctx, dst, src, "host", files, owner))
	})
	pubBase := best(func(r int) {
		dst := filepath.Join(work, "pubbase", strconv.Itoa(r))
		must(os.MkdirAll(dst, 0o700))
		for i := 0; i < *n; i++ {
			must(copySync(filepath.Join(src, "host", "s"+strconv.Itoa(i)), filepath.Join(dst, "s"+strconv.Itoa(i))))
		}
	})

	// Install, as the agent does from its held copy.
	files, err := secrets.Collect(src, "host")
	must(err)
	specsFor := func(dir string) map[string]secrets.Spec {
		specs := map[string]secrets.Spec{}
		for _, f := range files {
			specs[f.Path] = secrets.Spec{Path: filepath.Join(dir, f.Path), Owner: "nobody", Mode: "0400"}
		}
		return specs
	}
	inst := &secrets.Installer{}
	var state secrets.State
	var target string
	first := best(func(r int) {
		target = filepath.Join(work, "run", strconv.Itoa(r))
		o, err := inst.Install(ctx, filepath.Join(src, "host"), files, specsFor(target), secrets.State{})
		must(err)
		if len(o.Errors) > 0 {
			log.Fatal(o.Errors)
		}
		state = o.State
	})
	firstBase := best(func(r int) {
		dst := filepath.Join(work, "runbase", strconv.Itoa(r))
		must(os.MkdirAll(dst, 0o751))
		for i := 0; i < *n; i++ {
			must(copySync(filepath.Join(src, "host", "s"+strconv.Itoa(i)), filepath.Join(dst, "s"+strconv.Itoa(i))))
		}
	})
	specs := specsFor(target)
	idle := best(func(int) {
		o, err := inst.Install(ctx, filepath.Join(src, "host"), files, specs, state)
		must(err)
		if len(o.Changed) > 0 {
			log.Fatalf("idle install rewrote %d secrets", len(o.Changed))
		}
	})
	idleBase := best(func(int) {
		for _, f := range files {
			data, err := os.ReadFile(filepath.Join(target, f.Path))
			must(err)
			_ = data
		}
	})

	fmt.Printf("%d secrets of %d bytes, best of %d rounds\n", *n, *size, *rounds)
	row := func(what string, d, base time.Duration, baseWhat string) {
		fmt.Printf("%-34s %10s   baseline %-34s %10s   ratio %.2f\n", what, d.Round(time.Microsecond), baseWhat, base.Round(time.Microsecond), float64(d)/float64(base))
	}
	row("publish (collect+write, owned)", pub, pubBase, "(copy + fsync)")
	row("first install (atomic, owned)", first, firstBase, "(copy + fsync in place)")
	row("idle tick (all in place)", idle, idleBase, "(read every file)")
	fmt.Printf("per secret: publish %s, first install %s, idle check %s\n",
		(pub / time.Duration(*n)).Round(time.Microsecond), (first / time.Duration(*n)).Round(time.Microsecond), (idle / time.Duration(*n)).Round(time.Microsecond))
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
