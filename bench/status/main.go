// Command status benchmarks bento status on a generated chroot root: 1,000
// hosts by default, each with a manifest listing a 300-file flake and a
// report, in a mix of states. It measures, in the same run:
//
//   - the floor: reading every manifest.json and status.json, nothing else;
//
//   - the straightforward way: the same files decoded whole with
//     encoding/json (manifest.Parse, json.Unmarshal), one host after another;
//
//   - bento status' reader (status.Collect: parallel, the manifest's head
//     only), then the table, JSON and Prometheus renderings;
//
//   - the bento binary end to end (bento status --no-eval), process start
//     included.
//
//     go run ./bench/status [-hosts 1000] [-files 300] [-runs 5]
//
// Each figure is the median of -runs runs after one warm-up (page cache
// warm, as on a server that runs status from cron or --watch).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/render"
)

func main() {
	hosts := flag.Int("hosts", 1000, "hosts in the chroot root")
	files := flag.Int("files", 300, "files listed in each manifest")
	runs := flag.Int("runs", 5, "runs per variant (the median is printed)")
	flag.Parse()
	if err := run(*hosts, *files, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "bench/status:", err)
		os.Exit(1)
	}
}

// bench is one run's chroot root and the medians its phases measure.
type bench struct {
	tmp, root string
	runs      int
	opts      status.Options
	snap      *status.Snapshot

	floor, naive, collect, table, jsonOut, prom, binary time.Duration
}

func run(n, files, runs int) error {
	tmp, err := os.MkdirTemp("", "bento-bench-status-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{tmp: tmp, root: filepath.Join(tmp, "chroot"), runs: runs}
	now := time.Now()
	bytesWritten, err := benchtb.ChrootFleet(b.root, n, files, now, false)
	if err != nil {
		return err
	}
	fmt.Printf("bench/status: %d hosts, %d files per manifest, %.1f MB of manifests and reports, %d CPUs, median of %d runs\n\n",
		n, files, float64(bytesWritten)/1e6, runtime.NumCPU(), runs)

	b.opts = status.Options{Root: b.root, Now: now}
	if err := b.measureReaders(context.Background()); err != nil {
		return err
	}
	if err := b.measureRenderings(); err != nil {
		return err
	}
	if err := b.measureBinary(); err != nil {
		return err
	}
	b.report()
	return nil
}

// measure is f's median time over b.runs runs after one warm-up.
func (b *bench) measure(f func() error) (time.Duration, error) {
	if err := f(); err != nil { // warm-up
		return 0, err
	}
	var ds []time.Duration
	for i := 0; i < b.runs; i++ {
		start := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(start))
	}
	slices.Sort(ds)
	return ds[len(ds)/2], nil
}

// measureReaders times the floor, the baseline and status.Collect, whose
// snapshot the renderings then use.
func (b *bench) measureReaders(ctx context.Context) error {
	var err error
	if b.floor, err = b.measure(func() error { return readAll(b.root) }); err != nil {
		return err
	}
	if b.naive, err = b.measure(func() error { return decodeAll(b.root) }); err != nil {
		return err
	}
	b.collect, err = b.measure(func() error {
		var err error
		b.snap, err = status.Collect(ctx, b.opts)
		return err
	})
	return err
}

// measureRenderings times the table, JSON and Prometheus renderings of
// the snapshot.
func (b *bench) measureRenderings() error {
	timed := func(w func(io.Writer) error) (time.Duration, error) {
		return b.measure(func() error { return w(io.Discard) })
	}
	var err error
	if b.table, err = timed(func(w io.Writer) error { return render.Table(w, b.snap, render.TableOptions{}) }); err != nil {
		return err
	}
	if b.jsonOut, err = timed(func(w io.Writer) error { return render.JSON(w, b.snap) }); err != nil {
		return err
	}
	b.prom, err = timed(func(w io.Writer) error { return render.Prometheus(w, b.snap) })
	return err
}

// measureBinary builds bento and times bento status --no-eval end to end.
func (b *bench) measureBinary() error {
	bin := filepath.Join(b.tmp, "bento")
	build := exec.Command("go", "build", "-o", bin, "./cmd/bento")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/bento: %v\n%s", err, out)
	}
	var err error
	b.binary, err = b.measure(func() error {
		cmd := exec.Command(bin, "status", "--no-eval", "--chroot-root", b.root, "--state-dir", filepath.Join(b.tmp, "state"))
		cmd.Stdout = io.Discard
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() >= 3 {
			return nil // the mixed fleet exits 5: that is the answer, not a failure
		}
		return err
	})
	return err
}

func (b *bench) report() {
	fmt.Printf("%-52s %s\n", "floor: read every manifest and report", ms(b.floor))
	fmt.Printf("%-52s %s  (%.1f× the floor)\n", "baseline: decode them whole, one host at a time", ms(b.naive), ratio(b.naive, b.floor))
	fmt.Printf("%-52s %s  (%.1f× the floor, %.2f× the baseline)\n", "bento status: read and decide (status.Collect)", ms(b.collect), ratio(b.collect, b.floor), ratio(b.collect, b.naive))
	fmt.Printf("%-52s %s\n", "  + human table", ms(b.table))
	fmt.Printf("%-52s %s\n", "  + --json", ms(b.jsonOut))
	fmt.Printf("%-52s %s\n", "  + --prometheus", ms(b.prom))
	fmt.Printf("%-52s %s  (goal: well under 1 s)\n", "bento status --no-eval, the binary end to end", ms(b.binary))
	fmt.Printf("\nstates: %s\n", render.SummaryLine(b.snap, false))
}

func ms(d time.Duration) string { return fmt.Sprintf("%8.1f ms", float64(d.Microseconds())/1000) }

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// readAll reads every manifest and report: the I/O floor.
func readAll(root string) error {
	entries, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, e := range entries {
		for _, f := range []string{manifest.ManifestFile, manifest.StatusFile} {
			if _, err := os.ReadFile(filepath.Join(root, e.Name(), f)); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}

// decodeAll is the obvious implementation: decode both documents whole,
// one host after another.
func decodeAll(root string) error {
	entries, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(root, e.Name(), manifest.ManifestFile))
		if err != nil {
			return err
		}
		if _, err := manifest.Parse(data); err != nil {
			return err
		}
		data, err = os.ReadFile(filepath.Join(root, e.Name(), manifest.StatusFile))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		var r manifest.Report
		if err := json.NewDecoder(bytes.NewReader(data)).Decode(&r); err != nil {
			return err
		}
	}
	return nil
}
