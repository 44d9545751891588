package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 3, 15, 0, 0, 0, time.Local)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"", time.Time{}, ""},
		{"24h", now.Add(-24 * time.Hour), ""},
		{"7d", now.Add(-7 * 24 * time.Hour), ""},
		{"1h 30min", now.Add(-90 * time.Minute), ""},
		{"2026-12-01", time.Date(2026, 12, 1, 0, 0, 0, 0, time.Local), ""},
		{"2026-12-01T10:00:00Z", time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), ""},
		{"yesterday", time.Time{}, "neither a date"},
		{"0s", time.Time{}, "must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSince(tt.in, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseSince(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tt.want) {
				t.Fatalf("parseSince(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// historyRoot is a chroot root whose history holds alpha's publication,
// success, unchanged poll and a hostile failure.
func historyRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	ctx := context.Background()
	db, err := history.Open(ctx, history.Path(root))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	v := "0123456789abcdef"
	if err := db.RecordPublication(ctx, history.Publication{Host: "alpha", Version: v, At: t0, DeployRun: "run-1"},
		history.Publication{Host: "beta", Version: v, At: t0, DeployRun: "run-1"}); err != nil {
		t.Fatal(err)
	}
	rep := func(result manifest.Result, at time.Time, msg string) history.Observation {
		return history.Observation{Host: "alpha", State: "up-to-date", ObservedAt: at, Report: &manifest.Report{Format: 1,
			AttemptedVersion: v, AppliedVersion: v, Stage: manifest.StageConfirmed, Result: result, FinishedAt: at, Error: msg}}
	}
	hostile := rep(manifest.ResultFailure, t0.Add(20*time.Minute), "boom\x1b[2J\x1b]0;pwned\x07\u202eevil\nsecond line")
	hostile.State = "failing"
	hostile.Report.Stage = manifest.StageBuilt
	for _, o := range []history.Observation{
		rep(manifest.ResultSuccess, t0.Add(5*time.Minute), ""),
		rep(manifest.ResultUnchanged, t0.Add(15*time.Minute), ""),
		hostile,
	} {
		if _, err := db.RecordReport(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestHistoryCommand(t *testing.T) {
	root := historyRoot(t)
	out, errOut, code := runCLI(t, "history", "--chroot-root", root, "alpha")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// Header, published, up-to-date (the unchanged poll folded into it),
	// the failure.
	if len(lines) != 4 || !strings.Contains(lines[1], "published 01234567") || !strings.Contains(lines[2], "up-to-date 01234567") ||
		!strings.Contains(lines[3], "failing 01234567: failed at built: boom") {
		t.Fatalf("bento history alpha:\n%s", out)
	}
	if strings.ContainsAny(out, "\x1b\x07\u202e") || strings.Contains(lines[3], "\n") {
		t.Errorf("host-written controls reached the terminal: %q", lines[3])
	}
	if strings.Contains(out, "beta") {
		t.Errorf("alpha's history shows beta:\n%s", out)
	}

	out, _, code = runCLI(t, "history", "--json", "--chroot-root", root)
	var doc history.Document
	if err := json.Unmarshal([]byte(out), &doc); code != 0 || err != nil {
		t.Fatalf("--json: exit %d, %v\n%s", code, err, out)
	}
	if len(doc.Events) != 5 || doc.Truncated {
		t.Fatalf("--json has %d events (truncated %v), want all 5 of the fleet", len(doc.Events), doc.Truncated)
	}
	if strings.Contains(out, "\x1b") || !strings.Contains(doc.Events[4].Error, "\x1b[2J") {
		t.Errorf("--json: controls must be escaped in the text and intact in the data: %q", doc.Events[4].Error)
	}

	out, _, _ = runCLI(t, "history", "--json", "--limit", "2", "--chroot-root", root)
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Events) != 2 || !doc.Truncated || doc.Events[1].State != "failing" {
		t.Errorf("--limit 2: %v, %+v", err, doc)
	}
}

func TestHistoryCommandErrors(t *testing.T) {
	root := historyRoot(t)
	empty := t.TempDir()
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"no history yet", []string{"history", "--chroot-root", empty}, 0, "no events", "no history yet"},
		{"tag", []string{"history", "--chroot-root", root, "@prod"}, 2, "", "knows no tags"},
		{"unknown host", []string{"history", "--chroot-root", root, "gamma"}, 2, "", `"gamma" matches no host`},
		{"glob", []string{"history", "--chroot-root", root, "b*"}, 0, "beta", ""},
		{"bad since", []string{"history", "--chroot-root", root, "--since", "soon"}, 2, "", "--since"},
		{"negative limit", []string{"history", "--chroot-root", root, "--limit", "-1"}, 2, "", "--limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errOut, tt.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d, %q, %q", code, out, errOut, tt.code, tt.stdout, tt.stderr)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(empty, ".bento-state")); err == nil {
		t.Error("bento history created a state directory")
	}
}
