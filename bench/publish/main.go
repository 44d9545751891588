// Command publish benchmarks publication format 2 (package publish: one
// object per distinct content, hard-linked from a fleet-wide pool) against
// format 1 (internal/format1, a frozen copy of the previous publisher: a
// config/<version>/ tree per host and version), on the same generated
// fleet in the same run. The fleet has the usual hosts/<name>/ layout, so
// every host receives every host's directory.
//
// Scenarios: first deploy into empty chroots, unchanged redeploy, and a
// redeploy after one file changed. For each: wall time, bytes written
// (as each publisher counts them, and as write(2) saw them: wchar of
// /proc/self/io), inodes created or changed (ctime); after the first
// deploy, the inodes and disk space one version takes.
//
//	go run ./bench/publish                         # the default size, < 3 minutes here
//	go run ./bench/publish -hosts 1000 -files 1000 # the size
package main

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/format1"
	"github.com/bento-nix/bento/publish"
)

func main() {
	hosts := flag.Int("hosts", 200, "hosts in the fleet (each gets the whole flake)")
	files := flag.Int("files", 400, "files in the flake (at least hosts + 2: flake.nix, lib/mkhost.nix, one file per host)")
	size := flag.Int("size", 2048, "bytes of each extra file")
	dir := flag.String("dir", "", "where to work (default: a temporary directory; pick the file system you care about)")
	flag.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of format 2's unchanged redeploy to this file")
	flag.BoolVar(&only2, "only2", false, "measure format 2 only (no ratios): to iterate on it quickly")
	flag.Parse()
	if err := run(*hosts, *files, *size, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench/publish:", err)
		os.Exit(1)
	}
}

var (
	cpuProfile string
	only2      bool
)

type figures struct {
	dur     time.Duration
	bytes   int64 // as the publisher counts: contents and manifests
	wchar   int64 // bytes passed to write(2) by this process during the step
	touched int   // inodes created or changed during the step
	// After the step, under the chroot root:
	inodes  int   // distinct inodes
	diskKiB int64 // du -sk
}

// publisher is one format's publisher.
type publisher func(ctx context.Context, root string, ts []publish.Target) ([]publish.Result, error)

func format2(ctx context.Context, root string, ts []publish.Target) ([]publish.Result, error) {
	p, err := publish.Open(ctx, publish.Options{Root: root})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Publish(ctx, ts), nil
}

func format1Publish(ctx context.Context, root string, ts []publish.Target) ([]publish.Result, error) {
	p, err := format1.Open(ctx, format1.Options{Root: root})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Publish(ctx, ts), nil
}

func run(nHosts, nFiles, size int, base string) error {
	if nFiles < nHosts+2 {
		return fmt.Errorf("-files %d: the fleet has at least hosts + 2 = %d files", nFiles, nHosts+2)
	}
	work, err := os.MkdirTemp(base, "bento-bench-publish-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b := &bench{
		ctx: context.Background(), nHosts: nHosts, size: size, work: work,
		src:     filepath.Join(work, "fleet"),
		extra:   map[string]string{},
		roots:   map[string]string{"1": filepath.Join(work, "format1"), "2": filepath.Join(work, "format2")},
		pubs:    map[string]publisher{"1": format1Publish, "2": format2},
		changed: fmt.Sprintf("modules/m%02d/file-%03d.nix", 7%10, 7),
	}
	if err := b.writeFleet(nFiles); err != nil {
		return err
	}
	if err := b.makeTargets(); err != nil {
		return err
	}
	if err := b.readTree(); err != nil {
		return err
	}
	b.printHeader()
	for i, s := range b.steps() {
		if err := b.step(i, s); err != nil {
			return err
		}
	}
	b.report()
	return nil
}

// bench is the state the phases share: the generated fleet, its targets,
// each format's chroot root and publisher, and what the first deploy left.
type bench struct {
	ctx          context.Context
	nHosts, size int
	work, src    string
	extra        map[string]string // the flake's extra files, by path
	fl           fixture.Fleet
	targets      []publish.Target
	tr           *publish.Tree
	distinct     map[string]bool // the flake's distinct contents, by SHA-256
	roots        map[string]string
	pubs         map[string]publisher
	changed      string // the file the one-file change changes
	first        [2]figures
}

// step is one scenario: what to change in the fleet before both formats
// publish it.
type step struct {
	name   string
	before func() error
}

// writeFleet writes the fleet's flake: nFiles files, flake.nix,
// lib/mkhost.nix and one per host included.
func (b *bench) writeFleet(nFiles int) error {
	for i := 0; len(b.extra) < nFiles-b.nHosts-2; i++ {
		b.extra[fmt.Sprintf("modules/m%02d/file-%03d.nix", i%10, i)] = benchtb.NixModule(i, b.size)
	}
	b.fl = fixture.Fleet{Hosts: fixture.Many("host", b.nHosts, nil), Files: b.extra, Git: true}
	return fixture.Write(b.src, b.fl)
}

func (b *bench) makeTargets() error {
	for _, h := range b.fl.Hosts {
		host := fleet.Host{Name: h.Name, Managed: true, Enable: true, Layout: fleet.LayoutFlake, Ref: b.src, Attr: fleet.ConfigAttr(h.Name)}
		s, err := publish.SourceFor(host, b.src)
		if err != nil {
			return err
		}
		b.targets = append(b.targets, publish.Target{Host: host, Source: s, ExpectedToplevel: "/nix/store/" + strings.Repeat("0", 32) + "-nixos-system-" + h.Name})
	}
	return nil
}

// readTree reads the tree every host receives and counts its distinct
// contents.
func (b *bench) readTree() error {
	tr, err := publish.ReadTree(b.ctx, b.targets[0].Source, publish.TreeOptions{})
	if err != nil {
		return err
	}
	b.tr = tr
	b.distinct = map[string]bool{}
	for _, f := range tr.Files {
		b.distinct[f.SHA256] = true
	}
	return nil
}

func (b *bench) printHeader() {
	fmt.Printf("fleet: %d hosts × a %d-file flake (%d distinct contents, %s), %d CPUs, work dir %s (%s)\n\n",
		b.nHosts, len(b.tr.Files), len(b.distinct), bytesize.Format(b.tr.Size), runtime.NumCPU(), b.work, benchtb.FSType(b.work))
	fmt.Printf("%-19s │ %-58s │ %-58s │ %s\n", "", "format 1 (config/<version>/ trees)", "format 2 (objects/ + pool)", "format 2 / format 1")
	fmt.Printf("%-19s │ %8s %10s %10s %9s %8s %9s │ %8s %10s %10s %9s %8s %9s │ %6s %7s %7s\n", "scenario",
		"time", "written", "write(2)", "touched", "inodes", "du", "time", "written", "write(2)", "touched", "inodes", "du", "time", "written", "inodes")
}

func (b *bench) steps() []step {
	return []step{
		{"first deploy", func() error { return nil }},
		{"unchanged redeploy", func() error { return nil }},
		{"one-file change", func() error {
			b.extra[b.changed] = benchtb.NixModule(7, b.size) + "# changed\n"
			return fixture.Write(b.src, b.fl)
		}},
	}
}

// step runs scenario i in both formats and prints its row.
func (b *bench) step(i int, s step) error {
	if err := s.before(); err != nil {
		return err
	}
	f, err := b.measureFormats(i, s.name)
	if err != nil {
		return err
	}
	if i == 0 {
		b.first = f
	}
	printRow(s.name, f[0], f[1])
	return nil
}

// measureFormats publishes the fleet with each format (format 2 only with
// -only2), profiling format 2's unchanged redeploy (scenario 1) with
// -cpuprofile.
func (b *bench) measureFormats(i int, name string) ([2]figures, error) {
	var f [2]figures
	for k, format := range []string{"1", "2"} {
		if only2 && format == "1" {
			continue
		}
		runtime.GC()
		stop, err := profile(i == 1 && format == "2")
		if err != nil {
			return f, err
		}
		f[k], err = measure(b.ctx, b.pubs[format], b.roots[format], b.targets)
		stop()
		if err != nil {
			return f, fmt.Errorf("%s: format %s: %w", name, format, err)
		}
	}
	return f, nil
}

// profile starts the CPU profile into -cpuprofile's file when it is set
// and on; stop stops it and closes the file.
func profile(on bool) (stop func(), err error) {
	if cpuProfile == "" || !on {
		return func() {}, nil
	}
	out, err := os.Create(cpuProfile)
	if err != nil {
		return nil, err
	}
	pprof.StartCPUProfile(out)
	return func() {
		pprof.StopCPUProfile()
		out.Close()
	}, nil
}

func printRow(name string, a, b figures) {
	fmt.Printf("%-19s │ %8s %10s %10s %9d %8d %9s │ %8s %10s %10s %9d %8d %9s │ %6s %7s %7s\n", name,
		benchtb.Round(a.dur), bytesize.Format(a.bytes), bytesize.Format(a.wchar), a.touched, a.inodes, benchtb.FormatKiB(a.diskKiB),
		benchtb.Round(b.dur), bytesize.Format(b.bytes), bytesize.Format(b.wchar), b.touched, b.inodes, benchtb.FormatKiB(b.diskKiB),
		ratio(float64(b.dur), float64(a.dur)), ratio(float64(b.wchar), float64(a.wchar)), ratio(float64(b.touched), float64(a.touched)))
}

// report prints one version's cost, what the first deploy left, against
// format 2's goals, and the legend.
func (b *bench) report() {
	// One version: what the first deploy left.
	manifests := int64(0)
	for _, t := range b.targets {
		if fi, err := os.Stat(filepath.Join(b.roots["2"], t.Host.Name, "manifest.json")); err == nil {
			manifests += fi.Size()
		}
	}
	first := b.first
	fmt.Printf("\none version (after the first deploy): format 1 %d inodes, %s; format 2 %d inodes, %s (%s of inodes, %s of disk)\n",
		first[0].inodes, benchtb.FormatKiB(first[0].diskKiB), first[1].inodes, benchtb.FormatKiB(first[1].diskKiB),
		ratio(float64(first[1].inodes), float64(first[0].inodes)), ratio(float64(first[1].diskKiB), float64(first[0].diskKiB)))
	fmt.Printf("format 2 goals: inodes ≤ distinct files + 2 per host = %d (got %d); disk ≤ 1.1 × one copy of the tree + manifests = %s (got %s)\n",
		len(b.distinct)+2*b.nHosts, first[1].inodes, bytesize.Format(int64(1.1*float64(b.tr.Size))+manifests), benchtb.FormatKiB(first[1].diskKiB))
	fmt.Printf("\nwritten: contents and manifests as the publisher counts them; write(2): bytes this process passed to\n"+
		"write(2) during the step (wchar); touched: inodes created or changed during the step (ctime); inodes\n"+
		"and du: distinct inodes and disk used under the chroot root after the step (every host directory,\n"+
		"reports/ included; format 2 also counts its pool and retention records). The changed file is %s.\n", bytesize.Format(int64(len(b.extra[b.changed]))))
}

func measure(ctx context.Context, pub publisher, root string, ts []publish.Target) (figures, error) {
	var f figures
	w0 := wchar()
	start := time.Now()
	rs, err := pub(ctx, root, ts)
	if err != nil {
		return f, err
	}
	f.dur = time.Since(start)
	f.wchar = wchar() - w0
	for _, r := range rs {
		if r.Err != nil {
			return f, r.Err
		}
		f.bytes += r.BytesWritten
	}
	f.touched, f.inodes = inodes(root, start)
	f.diskKiB = benchtb.DiskKiB(root)
	return f, nil
}

// inodes counts the distinct inodes under root, and those created or
// changed since start (their ctime moves with any write, chmod, rename
// or link).
func inodes(root string, since time.Time) (touched, all int) {
	seen := map[uint64]bool{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		if seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		if !time.Unix(st.Ctim.Sec, st.Ctim.Nsec).Before(since) {
			touched++
		}
		return nil
	})
	return touched, len(seen)
}

// wchar is the bytes this process passed to write(2) and friends so far.
func wchar() int64 {
	data, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "wchar: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// ratio is a / b, as "0.01×".
func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	r := a / b
	switch {
	case r < 0.01:
		return fmt.Sprintf("%.4f×", r)
	case r < 1:
		return fmt.Sprintf("%.3f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}
