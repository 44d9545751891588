package agent

import (
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// A continuous check that says the same thing at another time is the
// same heartbeat (only status.json's mtime moves); a changed verdict is
// a new report.
func TestReportKeyIgnoresTheHealthChecksTime(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rep := func(checked time.Time, ok bool) manifest.Report {
		return manifest.Report{Host: "alpha", Result: manifest.ResultUnchanged, FinishedAt: checked,
			Health: &manifest.Health{CheckedAt: checked, OK: ok, Checks: []manifest.HealthCheck{{Name: "web", Kind: "http", OK: ok, Attempts: 1}}}}
	}
	a, later := rep(at, true), rep(at.Add(time.Hour), true)
	if reportKey(a) != reportKey(later) {
		t.Error("the same health verdict an hour later is a different report")
	}
	if a.Health.CheckedAt != at {
		t.Error("reportKey changed the report it fingerprints")
	}
	if reportKey(a) == reportKey(rep(at, false)) {
		t.Error("a failing check gives the same fingerprint as a passing one")
	}
}
