package status

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/history"
)

// TestCollectRecordsWhatChanged: Collect records each host's report once
// however often it runs, and a report that became unreadable or went away
// as such; a failing history is a warning, never a failed status.
func TestCollectRecordsWhatChanged(t *testing.T) {
	c := newChroot(t)
	c.publish("alpha", v1, now.Add(-time.Hour), sysA)
	c.report("alpha", applied(v1, sysA, now.Add(-time.Minute)))
	c.publish("beta", v1, now.Add(-time.Hour), sysA)
	c.report("beta", applied(v1, sysA, now.Add(-time.Minute)))
	c.publish("gamma", v1, now.Add(-time.Hour), sysA) // never seen

	ctx := context.Background()
	db, err := history.Open(ctx, history.Path(c.root))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var warnings []error
	o := Options{Root: c.root, Now: now, History: db, HistoryWarn: func(err error) { warnings = append(warnings, err) }}
	collect := func() *Snapshot {
		t.Helper()
		s, err := Collect(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	timeline := func() string {
		t.Helper()
		evs, err := db.Timeline(ctx, history.Query{})
		if err != nil {
			t.Fatal(err)
		}
		var k []string
		for _, e := range evs {
			k = append(k, e.Host+":"+e.Kind+":"+e.State)
		}
		return strings.Join(k, " ")
	}
	s := collect()
	collect()
	if got, want := timeline(), "alpha:report:up-to-date beta:report:up-to-date"; got != want {
		t.Fatalf("after two status runs: %q, want %q", got, want)
	}
	if s.HistoryBytes <= 0 {
		t.Errorf("HistoryBytes = %d", s.HistoryBytes)
	}
	c.raw("alpha", "reports/status.json", []byte("{not json"))
	if err := os.Remove(filepath.Join(c.root, "beta", "reports", "status.json")); err != nil {
		t.Fatal(err)
	}
	collect()
	collect()
	if got, want := timeline(), "alpha:report:up-to-date beta:report:up-to-date alpha:report-unreadable:unreadable beta:report-gone:never-seen"; got != want {
		t.Fatalf("after the reports broke: %q, want %q", got, want)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}

	// A closed database: the warning, and the fleet as ever.
	db.Close()
	s = collect()
	if len(warnings) == 0 || len(s.Hosts) != 3 {
		t.Errorf("with a broken history: %d warnings, %d hosts", len(warnings), len(s.Hosts))
	}
}
