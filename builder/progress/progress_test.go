package progress_test

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/builder/progress"
	"github.com/bento-nix/bento/fleet"
)

var results = []builder.Result{
	{Host: "alpha", Status: builder.StatusBuilt, Duration: 2100 * time.Millisecond, OutPath: "/nix/store/aaaa-nixos-system-alpha"},
	{Host: "bad", Status: builder.StatusFailed, Duration: time.Second,
		Err: &fleet.HostError{Host: "bad", Stage: "build", Err: errors.New("error: builder for 'x.drv' failed with exit code 1")}},
	{Host: "copyfail", Status: builder.StatusBuilt, Duration: 3 * time.Second, OutPath: "/nix/store/cccc-nixos-system-copyfail",
		CopyErr: &fleet.HostError{Host: "copyfail", Stage: "copy to bogus://x", Err: errors.New("error: don't know how to open Nix store 'bogus://x'")}},
	{Host: "late", Status: builder.StatusCancelled},
}

// drive feeds a display what Build would: hosts in parallel, each with
// phases and log lines, then its result.
func drive(p builder.Progress) {
	var names []string
	for _, r := range results {
		names = append(names, r.Host)
	}
	p.Begin(names)
	var wg sync.WaitGroup
	for _, r := range results[:3] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Phase(r.Host, builder.PhaseEvaluating)
			p.Phase(r.Host, builder.PhaseWaiting)
			p.Phase(r.Host, builder.PhaseBuilding)
			for i := range 50 {
				p.Log(r.Host, "line "+strings.Repeat("x", i))
			}
			p.Done(r)
		}()
	}
	wg.Wait()
	p.Done(results[3])
	p.End()
}

func TestPlain(t *testing.T) {
	var buf bytes.Buffer
	p := progress.NewPlain(&buf)
	p.Now = func() time.Time { return time.Date(2024, 5, 1, 13, 4, 5, 0, time.UTC) }
	drive(p)
	out := buf.String()
	for _, want := range []string{
		"13:04:05 building 4 hosts\n",
		"13:04:05 alpha: evaluating\n",
		"13:04:05 bad: building\n",
		"] alpha: built in 2.1s /nix/store/aaaa-nixos-system-alpha\n",
		"] bad: FAILED after 1.0s: build: error: builder for 'x.drv' failed with exit code 1\n",
		"] copyfail: built in 3.0s /nix/store/cccc-nixos-system-copyfail, but copy to bogus://x: error: don't know how to open Nix store 'bogus://x'\n",
		"13:04:05 [4/4] late: cancelled\n",
		"13:04:05 finished: 4/4 done, 3 failed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plain output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "waiting") {
		t.Errorf("plain output has a line for the short wait between evaluation and build:\n%s", out)
	}
	if strings.Contains(out, "line x") {
		t.Errorf("plain output repeats Nix's lines (they belong in the log files):\n%s", out)
	}
	if strings.Contains(out, "\x1b[") {
		t.Errorf("plain output has escape codes:\n%q", out)
	}
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

func TestLive(t *testing.T) {
	for _, color := range []bool{false, true} {
		var buf bytes.Buffer
		drive(progress.NewLive(&buf, color, mpb.WithAutoRefresh(), mpb.WithWidth(120)))
		raw := buf.String()
		out := ansi.ReplaceAllString(raw, "")
		for _, want := range []string{
			"✓ alpha    built in 2.1s /nix/store/aaaa-nixos-system-alpha\n",
			"✗ bad      FAILED after 1.0s: build: error: builder for 'x.drv' failed with exit code 1\n",
			"✗ copyfail built in 3.0s",
			"- late     cancelled\n",
			"4/4 done, 3 failed",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("colour %v: live output lacks %q:\n%s", color, want, out)
			}
		}
		hasColour := strings.Contains(raw, "\x1b[32m") || strings.Contains(raw, "\x1b[31m")
		if hasColour != color {
			t.Errorf("colour %v: output has colours: %v", color, hasColour)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{850 * time.Millisecond, "850ms"},
		{1234 * time.Millisecond, "1.2s"},
		{12340 * time.Millisecond, "12s"},
		{125 * time.Second, "2m05s"},
		{62 * time.Minute, "1h02m"},
	} {
		if got := progress.FormatDuration(tc.d); got != tc.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestDescribeUnchanged(t *testing.T) {
	cases := []struct {
		r    builder.Result
		want string
	}{
		{builder.Result{Host: "a", Status: builder.StatusBuilt, Duration: 1500 * time.Millisecond, OutPath: "/nix/store/x-a"}, "built in 1.5s /nix/store/x-a"},
		{builder.Result{Host: "a", Status: builder.StatusBuilt, Unchanged: true, OutPath: "/nix/store/x-a"}, "unchanged, not realised again /nix/store/x-a"},
	}
	for _, tc := range cases {
		if got := progress.Describe(tc.r); got != tc.want {
			t.Errorf("Describe(%+v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
