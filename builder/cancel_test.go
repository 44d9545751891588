package builder_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/internal/fixture"
)

// processesWith lists the processes whose command line contains any of
// the markers, as "pid: cmdline".
func processesWith(markers ...string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a zombie: nothing runs any more
		}
		line := string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		for _, m := range markers {
			if strings.Contains(line, m) {
				found = append(found, e.Name()+": "+line)
				break
			}
		}
	}
	return found
}

func TestCancelLeavesNoProcess(t *testing.T) {
	r := runner()
	// Marks this test's processes: nix's command line holds the host name,
	// the builder's shell script holds it too, and sleep holds the
	// unusual duration.
	prefix := "cancel" + nonce(t)
	seconds := 300 + float64(rand.IntN(1_000_000))/1e6
	sleepMarker := fmt.Sprintf("sleep %g", seconds)
	hosts := writeFleet(t, r, fixture.Fleet{Hosts: fixture.Many(prefix, 3, func(i int, h *fixture.Host) {
		h.BuildSeconds = seconds
	})})
	markers := []string{prefix, sleepMarker}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type outcome struct {
		results []builder.Result
		err     error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := builder.Build(ctx, r, hosts, builder.Options{Jobs: 2, StateDir: t.TempDir()})
		done <- outcome{res, err}
	}()

	// Wait until both allowed builds really sleep in their builders.
	deadline := time.After(2 * time.Minute)
	for len(processesWith(sleepMarker)) < 2 {
		select {
		case <-deadline:
			t.Fatalf("the builds never started: %v", processesWith(markers...))
		case o := <-done:
			t.Fatalf("Build returned before it was cancelled: %+v", o)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Logf("%d marked processes run before the cancellation", len(processesWith(markers...)))
	cancel()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("Build did not return after cancellation; still running: %v", processesWith(markers...))
	}
	if o.err != nil {
		t.Fatalf("Build: %v", o.err)
	}
	// Nix kills its builders while it exits, asynchronously: allow a
	// moment. A leaked builder sleeps for 300 s, far beyond it.
	left := processesWith(markers...)
	for wait := time.Now().Add(10 * time.Second); len(left) > 0 && time.Now().Before(wait); {
		time.Sleep(100 * time.Millisecond)
		left = processesWith(markers...)
	}
	if len(left) > 0 {
		t.Errorf("processes survived the cancellation:\n%s", strings.Join(left, "\n"))
	}
	for _, res := range o.results {
		if res.Status != builder.StatusCancelled || res.OK() || res.Err == nil {
			t.Errorf("%s: status %s, err %v; want cancelled", res.Host, res.Status, res.Err)
		}
		if res.OutPath != "" {
			t.Errorf("%s: cancelled build reports out path %s", res.Host, res.OutPath)
		}
	}
}
