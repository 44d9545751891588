package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/publish"
)

func TestRecordHistory(t *testing.T) {
	ctx := context.Background()
	row := func(host string, s publish.Status) Row {
		return Row{Result: publish.Result{Host: host, Status: s, Version: "0123456789abcdef", ExpectedToplevel: "/nix/store/x-" + host}}
	}
	rows := []Row{row("new", publish.StatusPublished), row("rebuilt", publish.StatusUpdated),
		row("same", publish.StatusUnchanged), row("broken", publish.StatusFailed)}

	t.Run("dry run records nothing", func(t *testing.T) {
		root := t.TempDir()
		run, warnings := Options{DryRun: true}.recordHistory(ctx, root, rows)
		if run != "" || len(warnings) != 0 {
			t.Fatalf("dry run: %q, %v", run, warnings)
		}
		if _, err := os.Stat(filepath.Join(root, publish.StateDir)); err == nil {
			t.Error("a dry run created the state directory")
		}
	})

	t.Run("published and updated hosts, one run id; old events pruned", func(t *testing.T) {
		root := t.TempDir()
		db, err := history.Open(ctx, history.Path(root))
		if err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-48 * time.Hour)
		db.RecordPublication(ctx, history.Publication{Host: "new", Version: "fedcba9876543210", At: old, DeployRun: "ancient"})
		db.Close()

		run, warnings := Options{HistoryRetention: 24 * time.Hour}.recordHistory(ctx, root, rows)
		if len(warnings) != 0 || run == "" {
			t.Fatalf("run %q, warnings %v", run, warnings)
		}
		doc, err := history.Read(ctx, root, history.Query{}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range doc.Events {
			if e.DeployRun != run || e.Kind != history.KindPublished {
				t.Errorf("event %+v, want a publication of run %s", e, run)
			}
			got = append(got, e.Host)
		}
		if strings.Join(got, ",") != "new,rebuilt" {
			t.Errorf("recorded %v, want the published and updated hosts only (the 48h-old event pruned)", got)
		}
	})

	t.Run("an unusable history is a warning", func(t *testing.T) {
		root := t.TempDir()
		if err := os.WriteFile(filepath.Join(root, publish.StateDir), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		run, warnings := Options{}.recordHistory(ctx, root, rows)
		if run == "" || len(warnings) != 1 || !strings.Contains(warnings[0], "not in the history") {
			t.Errorf("run %q, warnings %v", run, warnings)
		}
	})
}
