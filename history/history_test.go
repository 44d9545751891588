package history_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
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

func TestPathIsInThePublishersStateDir(t *testing.T) {
	if got, want := history.Path("/srv/chroot"), filepath.Join("/srv/chroot", publish.StateDir, history.File); got != want {
		t.Fatalf("Path = %s, want %s", got, want)
	}
}

func TestUnreadableAndBack(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	r1 := report("0123456789abcdef", manifest.StageConfirmed, manifest.ResultSuccess, t0)
	seq := []history.Observation{
		{Host: "alpha", Report: r1, ObservedAt: t0.Add(time.Minute)},
		{Host: "alpha", Unreadable: "status.json: invalid JSON", ObservedAt: t0.Add(2 * time.Minute)},
		{Host: "alpha", Unreadable: "status.json: invalid JSON", ObservedAt: t0.Add(3 * time.Minute)},
		{Host: "alpha", ObservedAt: t0.Add(4 * time.Minute)},
		{Host: "alpha", Report: r1, ObservedAt: t0.Add(5 * time.Minute)},
	}
	for _, o := range seq {
		if _, err := db.RecordReport(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	evs, _ := db.Timeline(ctx, history.Query{})
	if got, want := kinds(evs), "alpha:report alpha:report-unreadable alpha:report-gone alpha:report-restored"; got != want {
		t.Fatalf("timeline %q, want %q", got, want)
	}
	if evs[1].Error != "status.json: invalid JSON" || !evs[1].At.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("unreadable event %+v", evs[1])
	}
}

func TestUnchangedReportIsOneEventWhateverItsTimes(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	for i := range 5 {
		// The heartbeat moves an unchanged report's times (status dates it
		// by its file's mtime); it is still the same report.
		r := report("0123456789abcdef", manifest.StageConfirmed, manifest.ResultUnchanged, t0.Add(time.Duration(i)*10*time.Minute))
		if _, err := db.RecordReport(ctx, history.Observation{Host: "alpha", Report: r, ObservedAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	evs, _ := db.Timeline(ctx, history.Query{})
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1: %s", len(evs), kinds(evs))
	}
	// A failed attempt at another time is another report.
	for i := range 2 {
		r := report("0123456789abcdef", manifest.StageBuilt, manifest.ResultFailure, t0.Add(time.Duration(i)*10*time.Minute))
		db.RecordReport(ctx, history.Observation{Host: "alpha", Report: r, ObservedAt: t0.Add(time.Hour)})
	}
	if evs, _ = db.Timeline(ctx, history.Query{}); len(evs) != 3 {
		t.Fatalf("%d events, want 3: %s", len(evs), kinds(evs))
	}
}

func TestPublicationsAreRecordedOncePerRun(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	pub := history.Publication{Host: "alpha", Version: "0123456789abcdef", ExpectedSystem: "/nix/store/x", At: t0, DeployRun: "run-1"}
	for range 2 {
		if err := db.RecordPublication(ctx, pub); err != nil {
			t.Fatal(err)
		}
	}
	pub.DeployRun, pub.At = "run-2", t0.Add(time.Hour)
	db.RecordPublication(ctx, pub)
	evs, _ := db.Timeline(ctx, history.Query{Hosts: []string{"alpha"}})
	if got := kinds(evs); got != "alpha:published alpha:published" {
		t.Fatalf("timeline %q", got)
	}
	if evs[0].DeployRun != "run-1" || evs[0].ExpectedSystem != "/nix/store/x" || !evs[0].At.Equal(t0) || evs[0].At.Location() != time.UTC {
		t.Errorf("first publication %+v", evs[0])
	}
	hosts, err := db.Hosts(ctx)
	if err != nil || strings.Join(hosts, ",") != "alpha" {
		t.Errorf("Hosts = %v, %v", hosts, err)
	}
}

func TestTimelineQueries(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	for i := range 10 {
		for _, h := range []string{"alpha", "beta"} {
			db.RecordPublication(ctx, history.Publication{Host: h, Version: fmt.Sprintf("%016x", i), At: t0.Add(time.Duration(i) * time.Hour), DeployRun: fmt.Sprint(i)})
		}
	}
	db.RecordRolloutStep(ctx, history.RolloutStep{RolloutID: "r1", Wave: 1, Action: "start", At: t0.Add(30 * time.Minute)})
	db.RecordRolloutStep(ctx, history.RolloutStep{RolloutID: "r1", Wave: 2, Action: "abort", Reason: "health-check", Hosts: []string{"beta"}, At: t0.Add(90 * time.Minute)})
	tests := []struct {
		name  string
		q     history.Query
		count int
		first string // version of the first event, or kind
	}{
		{"everything", history.Query{}, 22, "0000000000000000"},
		{"one host", history.Query{Hosts: []string{"alpha"}}, 10, "0000000000000000"},
		{"one host with its rollout step", history.Query{Hosts: []string{"beta"}}, 11, "0000000000000000"},
		{"since", history.Query{Hosts: []string{"alpha"}, Since: t0.Add(8 * time.Hour)}, 2, "0000000000000008"},
		{"until", history.Query{Hosts: []string{"alpha"}, Until: t0.Add(2 * time.Hour)}, 2, "0000000000000000"},
		{"limit keeps the newest", history.Query{Hosts: []string{"alpha"}, Limit: 3}, 3, "0000000000000007"},
		{"unknown host", history.Query{Hosts: []string{"gamma"}}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, err := db.Timeline(ctx, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) != tt.count {
				t.Fatalf("%d events, want %d: %s", len(evs), tt.count, kinds(evs))
			}
			if tt.count > 0 && evs[0].Version != tt.first {
				t.Errorf("first event %+v, want version %s", evs[0], tt.first)
			}
			for i := 1; i < len(evs); i++ {
				if evs[i].At.Before(evs[i-1].At) {
					t.Errorf("events out of order at %d", i)
				}
			}
		})
	}
}

func TestPrune(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	for i := range 5 {
		db.RecordPublication(ctx, history.Publication{Host: "alpha", Version: fmt.Sprintf("%016x", i), At: t0.Add(time.Duration(i) * 24 * time.Hour), DeployRun: fmt.Sprint(i)})
	}
	n, err := db.Prune(ctx, t0.Add(3*24*time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("Prune = %d, %v; want 3", n, err)
	}
	evs, _ := db.Timeline(ctx, history.Query{})
	if len(evs) != 2 || evs[0].Version != "0000000000000003" {
		t.Fatalf("after prune: %+v", evs)
	}
	size, err := db.Size(ctx)
	if err != nil || size == 0 {
		t.Errorf("Size = %d, %v", size, err)
	}
}

// TestHostFieldsAreBounded: a hostile host's megabyte error is stored cut,
// as data.
func TestHostFieldsAreBounded(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	r := report("0123456789abcdef", manifest.StageBuilt, manifest.ResultFailure, t0)
	r.Error = strings.Repeat("é", 1<<20) + "'); DROP TABLE events; --"
	r.Log = strings.Repeat("x", 10000)
	r.AttemptedVersion = "\x1b[2J" + strings.Repeat("v", 1000)
	if _, err := db.RecordReport(ctx, history.Observation{Host: "alpha", Report: r, ObservedAt: t0}); err != nil {
		t.Fatal(err)
	}
	evs, _ := db.Timeline(ctx, history.Query{})
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	e := evs[0]
	for name, s := range map[string]string{"error": e.Error, "log": e.Log, "version": e.Version} {
		if len(s) > 2048 || !strings.HasSuffix(s, "…") || !utf8.ValidString(s) {
			t.Errorf("%s not cut to a bounded, valid string: %d bytes", name, len(s))
		}
	}
	if !strings.HasPrefix(e.Version, "\x1b[2J") {
		t.Errorf("the host's text is stored as it was (sanitised on output only): %q", e.Version[:8])
	}
	if size, _ := db.Size(ctx); size > 1<<20 {
		t.Errorf("database is %d bytes after one hostile report", size)
	}
}

// TestHostClockIsBounded: a report dated in the future is placed at the
// time it was observed.
func TestHostClockIsBounded(t *testing.T) {
	db := openTemp(t)
	ctx := context.Background()
	r := report("0123456789abcdef", manifest.StageConfirmed, manifest.ResultSuccess, time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC))
	db.RecordReport(ctx, history.Observation{Host: "alpha", Report: r, ObservedAt: t0})
	evs, _ := db.Timeline(ctx, history.Query{})
	if len(evs) != 1 || !evs[0].At.Equal(t0) || evs[0].FinishedAt.Year() != 2999 {
		t.Fatalf("events %+v", evs)
	}
}

func TestReadOnlyAndSchemaVersion(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, history.File)
	if _, err := history.OpenReadOnly(ctx, path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only open of a missing db: %v, want ErrNotExist", err)
	}
	db, err := history.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	db.RecordPublication(ctx, history.Publication{Host: "alpha", Version: "0123456789abcdef", At: t0, DeployRun: "1"})
	db.Close()
	// Opening again migrates nothing and keeps the data.
	db, err = history.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	ro, err := history.OpenReadOnly(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := ro.Timeline(ctx, history.Query{})
	if err != nil || len(evs) != 1 {
		t.Fatalf("read-only timeline: %v, %v", evs, err)
	}
	if err := ro.RecordPublication(ctx, history.Publication{Host: "beta", Version: "0123456789abcdef", DeployRun: "2"}); err == nil {
		t.Error("a read-only history accepted a write")
	}
	ro.Close()
	// A database from a newer bento is refused, not rewritten.
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`UPDATE schema_version SET version = 99`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	if _, err := history.Open(ctx, path); err == nil || !strings.Contains(err.Error(), "upgrade bento") {
		t.Fatalf("newer schema: %v, want an error saying to upgrade", err)
	}
}

// TestConcurrentWriters: two handles on one file (as deploy and status in
// two processes) and a reader, at once; every write lands.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), history.File)
	a, err := history.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := history.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for w, db := range []*history.DB{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				err := db.RecordPublication(ctx, history.Publication{Host: fmt.Sprintf("h%d", w), Version: fmt.Sprintf("%016x", i), At: t0, DeployRun: "r"})
				if err != nil {
					errs <- err
				}
				if _, err := db.Timeline(ctx, history.Query{Hosts: []string{"h0"}}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	evs, _ := a.Timeline(ctx, history.Query{})
	if len(evs) != 100 {
		t.Fatalf("%d events, want 100", len(evs))
	}
}

func TestReason(t *testing.T) {
	health := func(ok bool, checks ...manifest.HealthCheck) *manifest.Health {
		return &manifest.Health{OK: ok, Checks: checks}
	}
	nginx := manifest.HealthCheck{Name: "nginx", Kind: "unit"}
	db := manifest.HealthCheck{Name: "db", Kind: "command"}
	fine := manifest.HealthCheck{Name: "ssh", Kind: "unit", OK: true}
	tests := []struct {
		name     string
		rollback string
		health   *manifest.Health
		given    string
		want     string
	}{
		{"success", "", nil, "", ""},
		{"activation failed", manifest.RollbackActivationFailed, nil, "", "activation-failed"},
		{"health check", manifest.RollbackHealthCheck, health(false, fine, nginx, db), "", "health-check nginx, db"},
		{"health check without results", manifest.RollbackHealthCheck, nil, "", "health-check"},
		{"unhealthy but applied", "", health(false, nginx), "", "unhealthy: nginx"},
		{"healthy", "", health(true, fine), "", ""},
		{"the reader knows better", manifest.RollbackActivationFailed, nil, "custom", "custom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openTemp(t)
			r := report("0123456789abcdef", manifest.StageRolledBack, manifest.ResultRolledBack, t0)
			r.RollbackReason, r.Health = tt.rollback, tt.health
			if _, err := db.RecordReport(context.Background(), history.Observation{Host: "alpha", Report: r, Reason: tt.given, ObservedAt: t0}); err != nil {
				t.Fatal(err)
			}
			evs, _ := db.Timeline(context.Background(), history.Query{})
			if len(evs) != 1 || evs[0].Reason != tt.want {
				t.Fatalf("events %+v, want reason %q", evs, tt.want)
			}
		})
	}
}

// TestReadOnlyDirectorySeesLaterWrites: a reader that cannot write the
// directory (a dashboard reading root's state directory) keeps seeing what
// writers commit after it opened.
func TestReadOnlyDirectorySeesLaterWrites(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind-mount the directory read-only")
	}
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, history.File)
	w, err := history.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	w.RecordPublication(ctx, history.Publication{Host: "alpha", Version: "0000000000000001", At: t0, DeployRun: "1"})
	w.Close()
	ro := t.TempDir()
	if err := syscall.Mount(dir, ro, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(ro, syscall.MNT_DETACH) })
	if err := syscall.Mount("", ro, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	r, err := history.OpenReadOnly(ctx, filepath.Join(ro, history.File))
	if err != nil {
		t.Fatalf("read-only open in a read-only directory: %v", err)
	}
	defer r.Close()
	count := func() int {
		t.Helper()
		evs, err := r.Timeline(ctx, history.Query{})
		if err != nil {
			t.Fatal(err)
		}
		return len(evs)
	}
	if n := count(); n != 1 {
		t.Fatalf("%d events, want 1", n)
	}
	// A writer through the writable path, closing (and so checkpointing)
	// as status and deploy do.
	w, err = history.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	w.RecordPublication(ctx, history.Publication{Host: "alpha", Version: "0000000000000002", At: t0, DeployRun: "2"})
	w.Close()
	if n := count(); n != 2 {
		t.Fatalf("the reader sees %d events after a writer committed and closed, want 2", n)
	}
}
