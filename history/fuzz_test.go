package history_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
)

// FuzzRecordReport feeds hostile reports (any JSON a host could upload
// that decodes as a report) to RecordReport: it must never fail or panic
// on content, and what it stores is bounded and valid UTF-8 where the
// host sent valid UTF-8.
func FuzzRecordReport(f *testing.F) {
	good, _ := json.Marshal(report("0123456789abcdef", manifest.StageConfirmed, manifest.ResultSuccess, t0))
	f.Add(good)
	f.Add([]byte(`{"error":"\u001b[2J\u202e","log":"../../etc/passwd","finishedAt":"9999-12-31T23:59:59Z","health":{"ok":false,"checks":[{"name":"x"}]}}`))
	f.Add([]byte(`{"attemptedVersion":"'); DROP TABLE events; --","result":"rolled-back","rollbackReason":"health-check"}`))
	ctx := context.Background()
	db, err := history.Open(ctx, filepath.Join(f.TempDir(), history.File))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		var r manifest.Report
		if json.Unmarshal(data, &r) != nil {
			return
		}
		if _, err := db.RecordReport(ctx, history.Observation{Host: "alpha", Report: &r, State: "up-to-date", ObservedAt: t0}); err != nil {
			t.Fatalf("RecordReport: %v", err)
		}
		evs, err := db.Timeline(ctx, history.Query{Hosts: []string{"alpha"}, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			for _, s := range []string{e.Version, e.AppliedVersion, e.Stage, e.Result, e.Log} {
				if len(s) > 256 {
					t.Fatalf("a host field of %d bytes was stored", len(s))
				}
			}
			for _, s := range []string{e.System, e.ExpectedSystem, e.Error, e.Reason} {
				if len(s) > 4096 {
					t.Fatalf("a host field of %d bytes was stored", len(s))
				}
			}
			if utf8.ValidString(r.Error) && !utf8.ValidString(e.Error) {
				t.Fatalf("cutting broke UTF-8: %q", e.Error)
			}
		}
	})
}
