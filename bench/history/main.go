// Command history benchmarks the server's history database (package
// history, SQLite through modernc.org/sqlite):
//
//   - recording 1,000 new reports (one status run after every host
//     reported: goal ≤ 1 s), and the same 1,000 again (a status run over a
//     fleet that did nothing new: what every status and --watch redraw
//     pays);
//
//   - a database holding -days days of a -hosts fleet (each host, each
//     day: one publication and -reports new reports), then one host's
//     timeline over the whole period (goal ≤ 20 ms), the fleet's newest
//     200 events (bento history's default), and the daily prune;
//
//   - status.Collect over the same fleet's chroots without and with the
//     history, so that recording's cost on status is a figure.
//
//   - with -base-bento, the bento binary end to end (bento status --no-eval
//     over those chroots) built from this checkout against that one (a
//     build from before the history), process start included.
//
//     go run ./bench/history [-hosts 1000] [-days 90] [-reports 4] [-runs 5] [-base-bento FILE]
//
// Each figure is the median of -runs runs (after a warm-up where that makes
// sense). The files live in a temporary directory on the machine's disk.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/benchtb"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

func main() {
	hosts := flag.Int("hosts", 1000, "hosts in the fleet")
	days := flag.Int("days", 90, "days of history in the big database")
	reports := flag.Int("reports", 4, "new reports per host and day in the big database")
	runs := flag.Int("runs", 5, "runs per figure (the median is printed)")
	base := flag.String("base-bento", "", "a bento binary to compare bento status with (one built before the history)")
	flag.Parse()
	if err := run(*hosts, *days, *reports, *runs, *base); err != nil {
		fmt.Fprintln(os.Stderr, "bench/history:", err)
		os.Exit(1)
	}
}

func hostName(i int) string { return fmt.Sprintf("host-%04d", i) }

// observations are n hosts' reports of round r at t: a realistic report
// (a few hundred bytes), different in every round.
func observations(n, r int, t time.Time) []history.Observation {
	obs := make([]history.Observation, n)
	version := fmt.Sprintf("%016x", r)
	for i := range obs {
		rep := &manifest.Report{Format: 1, Host: hostName(i), SeenVersion: version, AppliedVersion: version, AttemptedVersion: version,
			Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, ExpectedToplevel: benchtb.SystemA, ActualToplevel: benchtb.SystemA,
			CurrentSystem: benchtb.SystemA, BootedSystem: benchtb.SystemA, Operation: "switch", AgentVersion: "dev",
			StartedAt: t.Add(-time.Minute), FinishedAt: t, Log: version + "-20261201T000000Z.log.gz"}
		obs[i] = history.Observation{Host: rep.Host, Report: rep, State: "up-to-date", ObservedAt: t}
	}
	return obs
}

// bench is what the phases share: the fleet's size, the temporary
// directory, and the big database's period.
type bench struct {
	ctx                        context.Context
	tmp                        string
	hosts, days, reports, runs int
	begin, end                 time.Time
}

func ms(d time.Duration) string { return fmt.Sprintf("%9.2f ms", float64(d.Microseconds())/1000) }

func run(hosts, days, reports, runs int, base string) error {
	tmp, err := os.MkdirTemp("", "bento-bench-history-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{ctx: context.Background(), tmp: tmp, hosts: hosts, days: days, reports: reports, runs: runs}
	fmt.Printf("bench/history: %d hosts, %d CPUs, load %s, median of %d runs\n\n", hosts, runtime.NumCPU(), benchtb.LoadAvg(), runs)

	// 1. Recording 1000 new reports, and 1000 unchanged ones.
	if err := b.recordTwice(); err != nil {
		return err
	}

	// 2. The big database.
	db, err := history.Open(b.ctx, filepath.Join(tmp, "big", history.File))
	if err != nil {
		return err
	}
	defer db.Close()
	round, err := b.fill(db)
	if err != nil {
		return err
	}
	if err := b.queries(db); err != nil {
		return err
	}
	if err := b.maintenance(db, round); err != nil {
		return err
	}

	// 3. status.Collect without and with the history.
	root := filepath.Join(tmp, "chroot")
	sdb, err := b.collect(root)
	if sdb != nil {
		defer sdb.Close()
	}
	if err != nil || base == "" {
		return err
	}
	return b.binaries(root, base)
}

// recordTwice records the fleet's new reports into a fresh database, then
// the same reports again, in every run.
func (b *bench) recordTwice() error {
	var fresh, again []time.Duration
	for r := range b.runs {
		db, err := history.Open(b.ctx, filepath.Join(b.tmp, fmt.Sprintf("insert-%d", r), history.File))
		if err != nil {
			return err
		}
		obs := observations(b.hosts, 1, time.Now())
		start := time.Now()
		n, err := db.RecordReport(b.ctx, obs...)
		if err != nil || n != b.hosts {
			return fmt.Errorf("record %d reports: %d, %v", b.hosts, n, err)
		}
		fresh = append(fresh, time.Since(start))
		start = time.Now()
		if n, err = db.RecordReport(b.ctx, obs...); err != nil || n != 0 {
			return fmt.Errorf("record the same reports again: %d, %v", n, err)
		}
		again = append(again, time.Since(start))
		db.Close()
	}
	fmt.Printf("%-60s %s  (goal ≤ 1 s)\n", fmt.Sprintf("record %d new reports (one transaction)", b.hosts), ms(benchtb.Median(fresh)))
	fmt.Printf("%-60s %s  (no write)\n", fmt.Sprintf("record the same %d again (nothing changed)", b.hosts), ms(benchtb.Median(again)))
	return nil
}

// fill writes -days days of the fleet into db and returns the number of
// report rounds it recorded.
func (b *bench) fill(db *history.DB) (int, error) {
	b.end = time.Now().Truncate(24 * time.Hour)
	b.begin = b.end.Add(-time.Duration(b.days) * 24 * time.Hour)
	start := time.Now()
	round := 0
	for d := range b.days {
		if err := b.fillDay(db, d, &round); err != nil {
			return 0, err
		}
	}
	fill := time.Since(start)
	events := b.days * b.hosts * (1 + b.reports)
	size, _ := db.Size(b.ctx)
	fmt.Printf("\nbig database: %d days × %d hosts × %d events = %d events, %.1f MB, written in %.1f s (%.0f events/s)\n",
		b.days, b.hosts, 1+b.reports, events, float64(size)/1e6, fill.Seconds(), float64(events)/fill.Seconds())
	return round, nil
}

// fillDay records day d: one publication per host, then -reports rounds of
// reports, counted in *round.
func (b *bench) fillDay(db *history.DB, d int, round *int) error {
	day := b.begin.Add(time.Duration(d) * 24 * time.Hour)
	pubs := make([]history.Publication, b.hosts)
	for i := range pubs {
		pubs[i] = history.Publication{Host: hostName(i), Version: fmt.Sprintf("%016x", d), ExpectedSystem: benchtb.SystemA, At: day, DeployRun: fmt.Sprintf("run-%d", d)}
	}
	if err := db.RecordPublication(b.ctx, pubs...); err != nil {
		return err
	}
	for k := range b.reports {
		*round++
		if _, err := db.RecordReport(b.ctx, observations(b.hosts, *round, day.Add(time.Duration(k+1)*time.Hour))...); err != nil {
			return err
		}
	}
	return nil
}

// measure runs f once as a warm-up, then -runs times, and returns the
// median.
func (b *bench) measure(f func() error) (time.Duration, error) {
	if err := f(); err != nil {
		return 0, err
	}
	var ds []time.Duration
	for range b.runs {
		start := time.Now()
		if err := f(); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(start))
	}
	return benchtb.Median(ds), nil
}

// queries measures the big database's timelines, one line each.
func (b *bench) queries(db *history.DB) error {
	var got int
	timeline := func(q history.Query) func() error {
		return func() error {
			evs, err := db.Timeline(b.ctx, q)
			got = len(evs)
			return err
		}
	}
	for _, q := range []struct {
		f     func() error
		label func() string
		note  string
	}{
		{timeline(history.Query{Hosts: []string{hostName(b.hosts / 2)}, Since: b.end.Add(-time.Duration(b.days) * 24 * time.Hour)}),
			func() string { return fmt.Sprintf("one host's %d-day timeline (%d events)", b.days, got) }, "  (goal ≤ 20 ms)"},
		{func() error {
			evs, err := db.Timeline(b.ctx, history.Query{Hosts: []string{hostName(b.hosts / 2)}})
			if err == nil {
				_, err = json.Marshal(evs)
			}
			return err
		}, func() string { return "  + encoded as JSON" }, ""},
		{timeline(history.Query{Limit: 201}),
			func() string { return fmt.Sprintf("the fleet's newest %d events (bento history's default)", got-1) }, ""},
		{timeline(history.Query{Since: b.end.Add(-24 * time.Hour)}),
			func() string { return fmt.Sprintf("the fleet's last day (%d events)", got) }, ""},
	} {
		d, err := b.measure(q.f)
		if err != nil {
			return err
		}
		fmt.Printf("%-60s %s%s\n", q.label(), ms(d), q.note)
	}
	return nil
}

// maintenance times the daily prune and one more round of new reports
// into the big database.
func (b *bench) maintenance(db *history.DB, round int) error {
	start := time.Now()
	pruned, err := db.Prune(b.ctx, b.begin.Add(24*time.Hour))
	if err != nil {
		return err
	}
	fmt.Printf("%-60s %s\n", fmt.Sprintf("prune the oldest day (%d events, as a daily deploy does)", pruned), ms(time.Since(start)))
	start = time.Now()
	if _, err := db.RecordReport(b.ctx, observations(b.hosts, round+1, b.end)...); err != nil {
		return err
	}
	fmt.Printf("%-60s %s\n", fmt.Sprintf("record %d new reports into the big database", b.hosts), ms(time.Since(start)))
	return nil
}

// collect measures status.Collect over chroots written under root,
// without and with the history. It returns the history it opened there
// (also with an error), for the caller to close.
func (b *bench) collect(root string) (*history.DB, error) {
	now := time.Now()
	if err := chroots(root, b.hosts, now); err != nil {
		return nil, err
	}
	opts := status.Options{Root: root, Now: now}
	without, err := b.measure(func() error { _, err := status.Collect(b.ctx, opts); return err })
	if err != nil {
		return nil, err
	}
	sdb, err := history.Open(b.ctx, history.Path(root))
	if err != nil {
		return nil, err
	}
	opts.History = sdb
	opts.HistoryWarn = func(err error) { fmt.Fprintln(os.Stderr, "bench/history: status history:", err) }
	// The first run records every report; measure runs after it are the
	// steady state: nothing changed.
	start := time.Now()
	if _, err := status.Collect(b.ctx, opts); err != nil {
		return sdb, err
	}
	first := time.Since(start)
	with, err := b.measure(func() error { _, err := status.Collect(b.ctx, opts); return err })
	if err != nil {
		return sdb, err
	}
	fmt.Printf("\n%-60s %s\n", fmt.Sprintf("status.Collect over %d hosts, no history", b.hosts), ms(without))
	fmt.Printf("%-60s %s  (+%s)\n", "  with the history, nothing new (every later run)", ms(with), ms(with-without))
	fmt.Printf("%-60s %s  (once, then as above)\n", "  with the history, every report new (first run)", ms(first))
	return sdb, nil
}

// binaries times bento status --no-eval over root, the base binary's
// against one built from this checkout.
func (b *bench) binaries(root, base string) error {
	bin := filepath.Join(b.tmp, "bento")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/bento").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/bento: %v\n%s", err, out)
	}
	// Interleaved, so that a change of the machine's load hits both.
	var before, after []time.Duration
	for range b.runs + 1 {
		for _, v := range []struct {
			path string
			ds   *[]time.Duration
		}{{base, &before}, {bin, &after}} {
			start := time.Now()
			if err := b.status(v.path, root); err != nil {
				return fmt.Errorf("%s status: %w", v.path, err)
			}
			*v.ds = append(*v.ds, time.Since(start))
		}
	}
	before, after = before[1:], after[1:] // the first is the warm-up
	fmt.Printf("\n%-60s %s  (rounds %s s)\n", "bento status --no-eval, "+base, ms(benchtb.Median(before)), benchtb.Rounds(before))
	fmt.Printf("%-60s %s  (rounds %s s)\n", "bento status --no-eval, this checkout (records)", ms(benchtb.Median(after)), benchtb.Rounds(after))
	return nil
}

// status runs the bento binary at path: bento status --no-eval over root.
func (b *bench) status(path, root string) error {
	cmd := exec.Command(path, "status", "--no-eval", "--chroot-root", root, "--state-dir", filepath.Join(b.tmp, "state"))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() >= 3 {
		return nil // a state's exit status, not a failure
	}
	return err
}

// chroots writes n chroots, each with a manifest and a report.
func chroots(root string, n int, now time.Time) error {
	for i := range n {
		host := hostName(i)
		dir := filepath.Join(root, host)
		if err := os.MkdirAll(filepath.Join(dir, manifest.LogsDir), 0o755); err != nil {
			return err
		}
		version := fmt.Sprintf("%016x", i+1)
		m := manifest.Manifest{Format: manifest.ManifestFormat, Host: host, Version: version, PublishedAt: now.Add(-time.Hour),
			ExpectedToplevel: benchtb.SystemA, Flake: manifest.Flake{Attr: "nixosConfigurations." + host}}
		obs := observations(1, i+1, now.Add(-time.Minute))[0]
		obs.Report.Host = host
		md, _ := json.Marshal(m)
		rd, _ := json.Marshal(obs.Report)
		if err := os.WriteFile(filepath.Join(dir, manifest.ManifestFile), md, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, manifest.StatusFile), rd, 0o644); err != nil {
			return err
		}
	}
	return nil
}
