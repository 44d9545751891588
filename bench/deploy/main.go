// Command deploy benchmarks publication: bento's publish package against
// what the original bento did, rsync -a --delete of the same tree into each
// host's directory, on the same generated fleet in the same run. Three
// scenarios: first deploy (empty chroots), unchanged redeploy, and a
// redeploy after one file changed. It prints time, bytes written and files
// written for both, and the ratios. Only publication is measured:
// discovery and builds are the same for both and are benchmarked apart
// (bench/eval, bench/build).
//
//	go run ./bench/deploy -hosts 200 -files 300
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/publish"
)

func main() {
	hosts := flag.Int("hosts", 200, "hosts in the fleet (each gets the whole flake)")
	files := flag.Int("files", 300, "files in the flake (at least hosts + 2: flake.nix, lib/mkhost.nix, one file per host)")
	size := flag.Int("size", 2048, "bytes of each extra file")
	dir := flag.String("dir", "", "where to work (default: a temporary directory; pick the file system you care about)")
	flag.Parse()
	if err := run(*hosts, *files, *size, *dir); err != nil {
		fmt.Fprintln(os.Stderr, "bench/deploy:", err)
		os.Exit(1)
	}
}

type figures struct {
	dur         time.Duration
	bytes       int64 // contents written, as counted by the tool
	touched     int   // inodes created or changed (ctime) during the step
	files       int   // files written anew
	linked      int   // hard links to the previous version (bento)
	shared      int   // hard links to another host's copy from the same run (bento)
	unchanged   int   // hosts not touched (bento)
	diskUsedKiB int64 // du -sk of the chroot root after the step
}

func run(nHosts, nFiles, size int, base string) error {
	if nFiles < nHosts+2 {
		return fmt.Errorf("-files %d: the fleet has at least hosts + 2 = %d files", nFiles, nHosts+2)
	}
	if _, err := exec.LookPath("rsync"); err != nil {
		return errors.New("rsync is not installed (apt-get install rsync): it is the baseline")
	}
	work, err := os.MkdirTemp(base, "bento-bench-deploy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "fleet")
	extra := map[string]string{}
	for i := 0; len(extra) < nFiles-nHosts-2; i++ {
		extra[fmt.Sprintf("modules/m%02d/file-%03d.nix", i%10, i)] = benchtb.NixModule(i, size)
	}
	fl := fixture.Fleet{Hosts: fixture.Many("host", nHosts, nil), Files: extra, Git: true}
	if err := fixture.Write(src, fl); err != nil {
		return err
	}
	ctx := context.Background()
	targets, err := targetsFor(fl, src)
	if err != nil {
		return err
	}
	if err := printFleet(ctx, targets[0], nHosts, work); err != nil {
		return err
	}
	changed := fmt.Sprintf("modules/m%02d/file-%03d.nix", 7%10, 7)
	steps := []step{
		{"first deploy", func() error { return nil }},
		{"unchanged redeploy", func() error { return nil }},
		{"one-file change", func() error {
			extra[changed] = benchtb.NixModule(7, size) + "# changed\n"
			return fixture.Write(src, fl)
		}},
	}
	if err := runSteps(ctx, steps, src, work, targets); err != nil {
		return err
	}
	fmt.Printf("\nwritten: file contents (+ manifests for bento) as counted by each tool; copied/linked/shared:\n"+
		"files written anew / hard-linked to the host's previous version / hard-linked to another host's\n"+
		"copy of this run; touched: inodes created or changed during the step (ctime), counted on disk;\n"+
		"du: disk used by the chroot root (bento keeps what its retention period needs, rsync one version).\n"+
		"the changed file is %s: × %d hosts = %s\n", bytesize.Format(int64(len(extra[changed]))), nHosts, bytesize.Format(int64(len(extra[changed])*nHosts)))
	return nil
}

// targetsFor are the fleet's hosts as publication targets of the flake at
// src.
func targetsFor(fl fixture.Fleet, src string) ([]publish.Target, error) {
	var targets []publish.Target
	for _, h := range fl.Hosts {
		host := fleet.Host{Name: h.Name, Managed: true, Enable: true, Layout: fleet.LayoutFlake, Ref: src, Attr: fleet.ConfigAttr(h.Name)}
		s, err := publish.SourceFor(host, src)
		if err != nil {
			return nil, err
		}
		targets = append(targets, publish.Target{Host: host, Source: s, ExpectedToplevel: "/nix/store/" + strings.Repeat("0", 32) + "-nixos-system-" + h.Name})
	}
	return targets, nil
}

// printFleet prints the fleet's line (the size of t's tree) and the
// baseline's.
func printFleet(ctx context.Context, t publish.Target, nHosts int, work string) error {
	tr, err := publish.ReadTree(ctx, t.Source, publish.TreeOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("fleet: %d hosts × a %d-file flake (%s), %d CPUs, work dir %s (%s)\n",
		nHosts, len(tr.Files), bytesize.Format(tr.Size), runtime.NumCPU(), work, benchtb.FSType(work))
	fmt.Printf("rsync baseline: one `rsync -a --delete --exclude .git` per host, as the original did\n\n")
	return nil
}

// A step is a scenario: what changes in the fleet before both publish it.
type step struct {
	name   string
	before func() error
}

// runSteps prints the table's header, then each step's row: bento's and
// rsync's figures, and their ratio.
func runSteps(ctx context.Context, steps []step, src, work string, targets []publish.Target) error {
	bentoRoot := filepath.Join(work, "bento")
	rsyncRoot := filepath.Join(work, "rsync")
	fmt.Printf("%-19s │ %-61s │ %-47s │ %s\n", "", "bento (publish)", "rsync -a --delete", "bento vs rsync")
	fmt.Printf("%-19s │ %8s %10s %6s %6s %6s %9s %9s │ %8s %10s %6s %8s %9s │ %s\n", "scenario", "time", "written", "copied", "linked", "shared", "touched", "du", "time", "written", "files", "touched", "du", "time")
	for _, s := range steps {
		if err := s.before(); err != nil {
			return err
		}
		b, err := bento(ctx, bentoRoot, targets)
		if err != nil {
			return fmt.Errorf("%s: bento: %w", s.name, err)
		}
		r, err := rsync(ctx, src, rsyncRoot, targets)
		if err != nil {
			return fmt.Errorf("%s: rsync: %w", s.name, err)
		}
		fmt.Printf("%-19s │ %8s %10s %6d %6d %6d %9d %9s │ %8s %10s %6d %8d %9s │ %s\n", s.name,
			benchtb.Round(b.dur), bytesize.Format(b.bytes), b.files, b.linked, b.shared, b.touched, benchtb.FormatKiB(b.diskUsedKiB),
			benchtb.Round(r.dur), bytesize.Format(r.bytes), r.files, r.touched, benchtb.FormatKiB(r.diskUsedKiB), ratio(b.dur, r.dur))
	}
	return nil
}

func bento(ctx context.Context, root string, targets []publish.Target) (figures, error) {
	var f figures
	start := time.Now()
	p, err := publish.Open(ctx, publish.Options{Root: root})
	if err != nil {
		return f, err
	}
	rs := p.Publish(ctx, targets)
	p.Close()
	f.dur = time.Since(start)
	for _, r := range rs {
		if r.Err != nil {
			return f, r.Err
		}
		f.bytes += r.BytesWritten
		f.files += r.Copied
		f.linked += r.Linked
		f.shared += r.Shared
		if r.Status == publish.StatusUnchanged {
			f.unchanged++
		}
	}
	f.diskUsedKiB = benchtb.DiskKiB(root)
	f.touched = touched(root, start)
	return f, nil
}

var statsRE = regexp.MustCompile(`(?m)^(Number of regular files transferred|Total transferred file size): ([\d,]+)`)

func rsync(ctx context.Context, src, root string, targets []publish.Target) (figures, error) {
	var f figures
	start := time.Now()
	for _, t := range targets {
		dst := filepath.Join(root, t.Host.Name, "config")
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return f, err
		}
		out, err := exec.CommandContext(ctx, "rsync", "-a", "--delete", "--exclude", ".git", "--stats", src+"/", dst+"/").CombinedOutput()
		if err != nil {
			return f, fmt.Errorf("%v: %s", err, out)
		}
		for _, m := range statsRE.FindAllStringSubmatch(string(out), -1) {
			n, _ := strconv.ParseInt(strings.ReplaceAll(m[2], ",", ""), 10, 64)
			if strings.HasPrefix(m[1], "Number") {
				f.files += int(n)
			} else {
				f.bytes += n
			}
		}
		// The original marked a change by touching a file per host.
		if err := os.WriteFile(filepath.Join(root, t.Host.Name, "last_change_date"), nil, 0o644); err != nil {
			return f, err
		}
	}
	f.dur = time.Since(start)
	f.diskUsedKiB = benchtb.DiskKiB(root)
	f.touched = touched(root, start)
	return f, nil
}

// touched counts the inodes under root created or changed since start
// (their ctime moves with any write, chmod, rename or link): what a step
// really wrote, whatever the tool says.
func touched(root string, since time.Time) int {
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
		if !time.Unix(st.Ctim.Sec, st.Ctim.Nsec).Before(since) {
			seen[st.Ino] = true
		}
		return nil
	})
	return len(seen)
}

func ratio(a, b time.Duration) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	if a < b {
		return fmt.Sprintf("%.1f× faster", float64(b)/float64(a))
	}
	return fmt.Sprintf("%.1f× slower", float64(a)/float64(b))
}
