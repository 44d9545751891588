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

func run(n, files, runs int) error {
	tmp, err := os.MkdirTemp("", "bento-bench-status-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "chroot")
	now := time.Now()
	bytesWritten, err := generate(root, n, files, now)
	if err != nil {
		return err
	}
	fmt.Printf("bench/status: %d hosts, %d files per manifest, %.1f MB of manifests and reports, %d CPUs, median of %d runs\n\n",
		n, files, float64(bytesWritten)/1e6, runtime.NumCPU(), runs)

	ctx := context.Background()
	opts := status.Options{Root: root, Now: now}
	var snap *status.Snapshot
	measure := func(f func() error) (time.Duration, error) {
		if err := f(); err != nil { // warm-up
			return 0, err
		}
		var ds []time.Duration
		for i := 0; i < runs; i++ {
			start := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds[len(ds)/2], nil
	}

	floor, err := measure(func() error { return readAll(root) })
	if err != nil {
		return err
	}
	naive, err := measure(func() error { return decodeAll(root) })
	if err != nil {
		return err
	}
	collect, err := measure(func() error {
		var err error
		snap, err = status.Collect(ctx, opts)
		return err
	})
	if err != nil {
		return err
	}
	timed := func(w func(io.Writer) error) (time.Duration, error) {
		return measure(func() error { return w(io.Discard) })
	}
	table, err := timed(func(w io.Writer) error { return render.Table(w, snap, render.TableOptions{}) })
	if err != nil {
		return err
	}
	jsonOut, err := timed(func(w io.Writer) error { return render.JSON(w, snap) })
	if err != nil {
		return err
	}
	prom, err := timed(func(w io.Writer) error { return render.Prometheus(w, snap) })
	if err != nil {
		return err
	}
	bin := filepath.Join(tmp, "bento")
	build := exec.Command("go", "build", "-o", bin, "./cmd/bento")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/bento: %v\n%s", err, out)
	}
	binary, err := measure(func() error {
		cmd := exec.Command(bin, "status", "--no-eval", "--chroot-root", root, "--state-dir", filepath.Join(tmp, "state"))
		cmd.Stdout = io.Discard
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() >= 3 {
			return nil // the mixed fleet exits 5: that is the answer, not a failure
		}
		return err
	})
	if err != nil {
		return err
	}

	ms := func(d time.Duration) string { return fmt.Sprintf("%8.1f ms", float64(d.Microseconds())/1000) }
	fmt.Printf("%-52s %s\n", "floor: read every manifest and report", ms(floor))
	fmt.Printf("%-52s %s  (%.1f× the floor)\n", "baseline: decode them whole, one host at a time", ms(naive), ratio(naive, floor))
	fmt.Printf("%-52s %s  (%.1f× the floor, %.2f× the baseline)\n", "bento status: read and decide (status.Collect)", ms(collect), ratio(collect, floor), ratio(collect, naive))
	fmt.Printf("%-52s %s\n", "  + human table", ms(table))
	fmt.Printf("%-52s %s\n", "  + --json", ms(jsonOut))
	fmt.Printf("%-52s %s\n", "  + --prometheus", ms(prom))
	fmt.Printf("%-52s %s  (goal: well under 1 s)\n", "bento status --no-eval, the binary end to end", ms(binary))
	fmt.Printf("\nstates: %s\n", render.SummaryLine(snap, false))
	return nil
}

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

// generate writes n chroots: a manifest with files entries, a report, in a
// mix of states (most up to date, as in a healthy fleet).
func generate(root string, n, files int, now time.Time) (int64, error) {
	var total int64
	list := make([]manifest.File, files)
	for i := range list {
		list[i] = manifest.File{Path: fmt.Sprintf("hosts/common/module-%04d.nix", i), Mode: 0o644, Size: 1234, SHA256: fmt.Sprintf("%064x", i)}
	}
	const sysA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a-1"
	const sysB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b-2"
	// The version failing and pending hosts ran before: 16 hex digits, as
	// the manifest format wants, and none of the loop's.
	const oldVersion = "deadbeef00000000"
	for i := 0; i < n; i++ {
		host := fmt.Sprintf("host-%04d", i)
		dir := filepath.Join(root, host)
		if err := os.MkdirAll(filepath.Join(dir, manifest.LogsDir), 0o755); err != nil {
			return 0, err
		}
		version := fmt.Sprintf("%016x", i+1)
		m := manifest.Manifest{Format: manifest.Format, Host: host, Version: version, PublishedAt: now.Add(-time.Hour),
			ExpectedToplevel: sysA, Flake: manifest.Flake{Attr: "nixosConfigurations." + host}, Files: list}
		r := manifest.Report{Format: manifest.Format, Host: host, SeenVersion: version, AppliedVersion: version, AttemptedVersion: version,
			Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, ExpectedToplevel: sysA, ActualToplevel: sysA,
			CurrentSystem: sysA, BootedSystem: sysA, Operation: "switch", AgentVersion: "dev",
			StartedAt: now.Add(-2 * time.Minute), FinishedAt: now.Add(-time.Minute), Log: version + "-20250101T000000Z.log.gz"}
		switch i % 20 {
		case 1:
			r.AppliedVersion = oldVersion
		case 2:
			r.Result, r.Stage, r.AppliedVersion, r.Error = manifest.ResultFailure, manifest.StageFailed, oldVersion, "build: error: builder for '/nix/store/x.drv' failed with exit code 1"
		case 3:
			r.CurrentSystem = sysB
		case 4:
			r.FinishedAt = now.Add(-3 * time.Hour)
		}
		md, _ := json.Marshal(m)
		rd, _ := json.Marshal(r)
		if err := os.WriteFile(filepath.Join(dir, manifest.ManifestFile), md, 0o644); err != nil {
			return 0, err
		}
		total += int64(len(md))
		if i%20 == 5 {
			continue // never seen
		}
		if err := os.WriteFile(filepath.Join(dir, manifest.StatusFile), rd, 0o644); err != nil {
			return 0, err
		}
		total += int64(len(rd))
	}
	return total, nil
}

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
