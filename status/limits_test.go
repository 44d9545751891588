package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

func logNames(t *testing.T, c chroot, host string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.root, host, manifest.LogsDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestEnforceReportLimits(t *testing.T) {
	small := ReportLimits{MaxBytes: 10 << 10, MaxFiles: 6}
	tests := []struct {
		name string
		// setup writes the host's reports/ (status.json is one file of it).
		setup      func(c chroot)
		limits     ReportLimits
		wantErr    bool     // still over after removals
		exceeded   bool     // flagged
		wantLogs   []string // what is left in reports/logs
		wantRemove int
	}{
		{
			name: "within the limits",
			setup: func(c chroot) {
				for i := range 3 {
					c.logAt("alpha", fmt.Sprintf("v-%d.log", i), 1000, now.Add(time.Duration(i)*time.Minute))
				}
			},
			limits:   small,
			wantLogs: []string{"v-0.log", "v-1.log", "v-2.log"},
		},
		{
			name: "too many files: the oldest logs go",
			setup: func(c chroot) {
				// Names sort against their times: removal follows the times.
				for i := range 8 {
					c.logAt("alpha", fmt.Sprintf("v-%d.log", 7-i), 10, now.Add(time.Duration(i)*time.Minute))
				}
			},
			// status.json, logs/ and 8 logs are 10 entries: 4 logs go.
			limits:     small,
			exceeded:   true,
			wantLogs:   []string{"v-0.log", "v-1.log", "v-2.log", "v-3.log"},
			wantRemove: 4,
		},
		{
			name: "too many bytes: the oldest logs go",
			setup: func(c chroot) {
				for i := range 4 {
					c.logAt("alpha", fmt.Sprintf("v-%d.log", i), 4<<10, now.Add(time.Duration(i)*time.Minute))
				}
			},
			limits:     small,
			exceeded:   true,
			wantLogs:   []string{"v-2.log", "v-3.log"},
			wantRemove: 2,
		},
		{
			name: "something else fills reports/: no log is removed",
			setup: func(c chroot) {
				c.logAt("alpha", "v-0.log", 100, now)
				c.raw("alpha", "reports/junk/big", bytes.Repeat([]byte("j"), 20<<10))
			},
			limits:   small,
			wantErr:  true,
			exceeded: true,
			wantLogs: []string{"v-0.log"},
		},
		{
			name: "a sparse file counts at its apparent size",
			setup: func(c chroot) {
				c.logAt("alpha", "v-0.log", 10, now)
				f, err := os.Create(filepath.Join(c.root, "alpha", "reports", "sparse"))
				if err != nil {
					c.t.Fatal(err)
				}
				if err := f.Truncate(1 << 30); err != nil {
					c.t.Fatal(err)
				}
				f.Close()
			},
			limits:   small,
			wantErr:  true,
			exceeded: true,
			wantLogs: []string{"v-0.log"},
		},
		{
			name: "nesting deeper than any agent writes",
			setup: func(c chroot) {
				c.logAt("alpha", "v-0.log", 10, now)
				c.raw("alpha", "reports/a/b/c/d/e/f/g/h/i/x", []byte("x"))
			},
			limits:   ReportLimits{MaxBytes: 1 << 30, MaxFiles: 100},
			wantErr:  true,
			exceeded: true,
			wantLogs: []string{"v-0.log"},
		},
		{
			name: "defaults: 500 files",
			setup: func(c chroot) {
				for i := range 505 {
					c.logAt("alpha", fmt.Sprintf("v-%03d.log", i), 1, now.Add(time.Duration(i)*time.Second))
				}
			},
			exceeded:   true,
			wantRemove: 7, // 505 logs + status.json + logs/ = 507 entries
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newChroot(t)
			c.publish("alpha", v1, now, sysA)
			c.report("alpha", applied(v1, sysA, now))
			tt.setup(c)
			u, err := EnforceReportLimits(c.root, "alpha", tt.limits, false)
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, ErrReportsOverLimit)) {
				t.Fatalf("err = %v, want over limit: %v", err, tt.wantErr)
			}
			if u.Exceeded() != tt.exceeded {
				t.Errorf("exceeded = %v, want %v (%+v)", u.Exceeded(), tt.exceeded, u)
			}
			if len(u.Removed) != tt.wantRemove {
				t.Errorf("removed %v, want %d", u.Removed, tt.wantRemove)
			}
			if tt.wantLogs != nil {
				if got := logNames(t, c, "alpha"); !slices.Equal(got, tt.wantLogs) {
					t.Errorf("logs left %v, want %v", got, tt.wantLogs)
				}
			}
			if tt.exceeded && !strings.Contains(u.Describe(), "reports/ holds") {
				t.Errorf("describe %q", u.Describe())
			}
			// A second pass finds what the first left: within the limits
			// when the first could fix it.
			u2, err2 := EnforceReportLimits(c.root, "alpha", tt.limits, false)
			if (err2 != nil) != tt.wantErr || u2.Exceeded() != tt.wantErr || len(u2.Removed) != 0 {
				t.Errorf("second pass: %v, %+v", err2, u2)
			}
		})
	}
}

// A dry run measures and says what it would remove, and removes nothing.
func TestEnforceReportLimitsDryRun(t *testing.T) {
	c := newChroot(t)
	c.publish("alpha", v1, now, sysA)
	for i := range 5 {
		c.logAt("alpha", fmt.Sprintf("v-%d.log", i), 10, now.Add(time.Duration(i)*time.Minute))
	}
	u, err := EnforceReportLimits(c.root, "alpha", ReportLimits{MaxBytes: 1 << 20, MaxFiles: 3}, true)
	if !errors.Is(err, ErrReportsOverLimit) || len(u.Removed) != 3 {
		t.Fatalf("dry run: %v, %+v", err, u)
	}
	if !strings.Contains(u.Describe(), "would remove its 3 oldest logs") {
		t.Errorf("describe %q", u.Describe())
	}
	if got := logNames(t, c, "alpha"); len(got) != 5 {
		t.Errorf("dry run removed logs: %v", got)
	}
}

// Symlinks the host planted never lead a removal out of its reports/:
// reports/logs pointing at the published config, a log pointing at a
// file elsewhere.
func TestEnforceReportLimitsSymlinks(t *testing.T) {
	c := newChroot(t)
	c.publish("alpha", v1, now, sysA)
	outside := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(outside, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		c.raw("alpha", fmt.Sprintf("config/v%d/flake.nix", i), []byte("{}"))
	}
	rep := filepath.Join(c.root, "alpha", manifest.ReportsDir)
	if err := os.Symlink("../config/v0", filepath.Join(rep, "logs")); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := os.Symlink(outside, filepath.Join(rep, fmt.Sprintf("link-%d.log", i))); err != nil {
			t.Fatal(err)
		}
	}
	u, err := EnforceReportLimits(c.root, "alpha", ReportLimits{MaxBytes: 1 << 20, MaxFiles: 3}, false)
	if !errors.Is(err, ErrReportsOverLimit) || len(u.Removed) != 0 {
		t.Fatalf("got %v, %+v; want over the limit, nothing removed", err, u)
	}
	if _, err := os.Stat(filepath.Join(c.root, "alpha", "config", "v0", "flake.nix")); err != nil {
		t.Errorf("published config touched: %v", err)
	}
	if data, err := os.ReadFile(outside); err != nil || string(data) != "keep" {
		t.Errorf("file outside touched: %q %v", data, err)
	}
}

// bento status shows a host over its limits as unreadable, reads nothing
// of its reports, removes its excess, and shows the other hosts as usual.
func TestCollectReportsOverLimit(t *testing.T) {
	c := newChroot(t)
	for _, h := range []string{"alpha", "beta"} {
		c.publish(h, v1, now.Add(-time.Hour), sysA)
		c.report(h, applied(v1, sysA, now.Add(-time.Minute)))
	}
	for i := range 12 {
		c.logAt("alpha", fmt.Sprintf("v-%02d.log", i), 1<<10, now.Add(time.Duration(i)*time.Minute))
	}
	limits := ReportLimits{MaxBytes: 8 << 10, MaxFiles: 100}
	s, err := Collect(context.Background(), Options{Root: c.root, Now: now, ReportLimits: limits})
	if err != nil {
		t.Fatal(err)
	}
	rows := rowsByHost(s)
	a := rows["alpha"]
	if a.State != Unreadable || !strings.HasPrefix(a.Message, "reports over limit: ") || !strings.Contains(a.Message, "removed its 5 oldest logs") || !a.ReportsOverLimit {
		t.Errorf("alpha: %s %q over=%v", a.State, a.Message, a.ReportsOverLimit)
	}
	if a.AppliedVersion != "" || a.LastSeen != nil {
		t.Errorf("alpha's report was read: %+v", a)
	}
	if b := rows["beta"]; b.State != UpToDate || b.ReportsOverLimit {
		t.Errorf("beta: %s %q", b.State, b.Message)
	}
	if s.ExitCode != ExitFailing {
		t.Errorf("exit code %d, want %d", s.ExitCode, ExitFailing)
	}
	// The snapshot bento status --json prints flags exactly alpha
	// (status/render tests the gauge of a row so flagged).
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Hosts []map[string]any `json:"hosts"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	for _, h := range doc.Hosts {
		over := h["reportsOverLimit"] == true
		if over != (h["host"] == "alpha") {
			t.Errorf("JSON host %v: reportsOverLimit %v", h["host"], h["reportsOverLimit"])
		}
	}
	// The removal fixed it: the next read shows the host as it is.
	s, err = Collect(context.Background(), Options{Root: c.root, Now: now, ReportLimits: limits})
	if err != nil {
		t.Fatal(err)
	}
	if a := rowsByHost(s)["alpha"]; a.State != UpToDate {
		t.Errorf("alpha after the removal: %s %q", a.State, a.Message)
	}
}

// What the limits cost each read of a host: a healthy one (a report and the
// agent's 20 logs) and one at the file limit.
func BenchmarkEnforceReports(b *testing.B) {
	for _, logs := range []int{20, DefaultReportsMaxFiles - 2} {
		b.Run(fmt.Sprintf("%d-logs", logs), func(b *testing.B) {
			c := chroot{b, b.TempDir()}
			c.publish("alpha", v1, now, sysA)
			c.report("alpha", applied(v1, sysA, now))
			for i := range logs {
				c.logAt("alpha", fmt.Sprintf("v-%03d.log", i), 1<<10, now.Add(time.Duration(i)*time.Second))
			}
			r, err := os.OpenRoot(filepath.Join(c.root, "alpha"))
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			b.ResetTimer()
			for b.Loop() {
				if u, err := EnforceReportLimitsIn(r, ReportLimits{}, false); err != nil || u.Exceeded() {
					b.Fatal(err, u)
				}
			}
		})
	}
}
