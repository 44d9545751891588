package history

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

const crashDBEnv = "BENTO_HISTORY_CRASH_DB"

// crashReports are n reports of distinct hosts, batch b.
func crashReports(b, n int) []Observation {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(b) * time.Hour)
	obs := make([]Observation, n)
	for i := range obs {
		obs[i] = Observation{Host: fmt.Sprintf("host-%05d", i), State: "up-to-date", ObservedAt: at,
			Report: &manifest.Report{Format: 1, AttemptedVersion: fmt.Sprintf("%016x", b), Stage: manifest.StageConfirmed,
				Result: manifest.ResultSuccess, FinishedAt: at, Error: fmt.Sprintf("batch %d", b)}}
	}
	return obs
}

// TestHelperCrashChild is not a test: TestKillMidInsert runs the test
// binary with it selected, and kills it in the middle of a transaction.
func TestHelperCrashChild(t *testing.T) {
	path := os.Getenv(crashDBEnv)
	if path == "" {
		t.Skip("helper for TestKillMidInsert")
	}
	ctx := context.Background()
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := db.RecordReport(ctx, crashReports(1, 2000)...)
	if err != nil || n != 2000 {
		t.Fatalf("first batch: %d, %v", n, err)
	}
	fmt.Println("committed")
	db.recorded = func(n int) {
		if n == 1500 {
			// Well inside the second transaction: the parent kills us now.
			fmt.Println("mid-insert")
			select {}
		}
	}
	db.RecordReport(ctx, crashReports(2, 2000)...)
	t.Fatal("the second batch was not interrupted")
}

// TestKillMidInsert: kill -9 in the middle of a big insert leaves the
// database as the last commit left it, consistent, and usable at once.
func TestKillMidInsert(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", File)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDBEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	var got []string
	for lines.Scan() {
		got = append(got, lines.Text())
		if lines.Text() == "mid-insert" {
			break
		}
	}
	if len(got) < 2 || got[len(got)-1] != "mid-insert" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not reach the middle of its insert; said %q", got)
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	cmd.Wait()

	db, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	defer db.Close()
	var check string
	if err := db.db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check: %q, %v", check, err)
	}
	evs, err := db.Timeline(ctx, Query{})
	if err != nil {
		t.Fatal(err)
	}
	batches := map[string]int{}
	for _, e := range evs {
		batches[e.Error]++
	}
	if len(evs) != 2000 || batches["batch 1"] != 2000 {
		t.Fatalf("after kill -9: %d events %v, want exactly the 2000 of the committed batch", len(evs), batches)
	}
	// The interrupted batch goes in whole on the next try.
	n, err := db.RecordReport(ctx, crashReports(2, 2000)...)
	if err != nil || n != 2000 {
		t.Fatalf("second batch after the crash: %d, %v", n, err)
	}
}

// TestFullDisk: a transaction that meets a full disk fails whole, with an
// error; the database keeps every committed batch and stays consistent.
func TestFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs for the full-disk test (needs root and CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(dir, "state", File))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	committed := 0
	var full error
	for b := 1; b < 100 && full == nil; b++ {
		n, err := db.RecordReport(ctx, crashReports(b, 200)...)
		if err != nil {
			full = err
			break
		}
		committed += n
	}
	if full == nil || committed == 0 {
		t.Fatalf("1 MiB never filled (%d events committed)", committed)
	}
	if !strings.Contains(full.Error(), "full") {
		t.Errorf("the error does not say the disk is full: %v", full)
	}
	var check string
	if err := db.db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check after a full disk: %q, %v", check, err)
	}
	evs, err := db.Timeline(ctx, Query{})
	if err != nil || len(evs) != committed {
		t.Fatalf("%d events after the full disk, %v; want the %d committed", len(evs), err, committed)
	}
}
