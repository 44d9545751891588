package history_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
)

func openTemp(t *testing.T) *history.DB {
	t.Helper()
	db, err := history.Open(context.Background(), filepath.Join(t.TempDir(), "state", history.File))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func report(version string, stage manifest.Stage, result manifest.Result, finished time.Time) *manifest.Report {
	return &manifest.Report{Format: 1, Host: "alpha", SeenVersion: version, AttemptedVersion: version,
		AppliedVersion: version, Stage: stage, Result: result, CurrentSystem: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos",
		StartedAt: finished.Add(-time.Minute), FinishedAt: finished, Log: "20261201-120000.log"}
}

func kinds(evs []history.Event) string {
	var k []string
	for _, e := range evs {
		k = append(k, e.Host+":"+e.Kind)
	}
	return strings.Join(k, " ")
}

// TestReportSequences feeds sequences of observations and checks the
// timeline a user would read.
func TestReportSequences(t *testing.T) {
	v1, v2 := "0123456789abcdef", "fedcba9876543210"
	r1 := report(v1, manifest.StageConfirmed, manifest.ResultSuccess, t0)
	r2 := report(v2, manifest.StageConfirmed, manifest.ResultSuccess, t0.Add(time.Hour))
	obs := func(r *manifest.Report, at time.Duration) history.Observation {
		return history.Observation{Host: "alpha", Report: r, ObservedAt: t0.Add(2*time.Hour + at)}
	}
	tests := []struct {
		name string
		seq  []history.Observation
		want string
	}{
		{"same report twice is one event", []history.Observation{obs(r1, 0), obs(r1, time.Minute)}, "alpha:report"},
		{"a new report", []history.Observation{obs(r1, 0), obs(r2, time.Minute)}, "alpha:report alpha:report"},
		{"no report at all", []history.Observation{obs(nil, 0), obs(nil, time.Minute)}, ""},
		{"report gone once", []history.Observation{obs(r1, 0), obs(nil, time.Minute), obs(nil, 2*time.Minute)}, "alpha:report alpha:report-gone"},
		{"gone and back", []history.Observation{obs(r1, 0), obs(nil, time.Minute), obs(r1, 2*time.Minute)}, "alpha:report alpha:report-gone alpha:report-restored"},
		{"back to an older report", []history.Observation{obs(r1, 0), obs(r2, time.Minute), obs(r1, 2*time.Minute), obs(r1, 3*time.Minute)},
			"alpha:report alpha:report alpha:report-regressed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTemp(t)
			for _, o := range tt.seq {
				if _, err := db.RecordReport(context.Background(), o); err != nil {
					t.Fatal(err)
				}
			}
			evs, err := db.Timeline(context.Background(), history.Query{Hosts: []string{"alpha"}})
			if err != nil {
				t.Fatal(err)
			}
			if got := kinds(evs); got != tt.want {
				t.Errorf("timeline %q, want %q", got, tt.want)
			}
		})
	}
}
