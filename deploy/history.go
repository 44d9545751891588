package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/publish"
)

// historyTimeout bounds recording after the publication: the database is
// local, so this is only reached when another process holds its lock.
const historyTimeout = 30 * time.Second

// newRunID names one deploy run in the history: when it ran, plus random
// digits so that two runs in the same second differ.
func newRunID(now time.Time) string {
	var b [3]byte
	rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// recordHistory records this run's publications in the server's history
// and prunes what left its retention. It runs after the publication and
// never undoes it: a failure is a warning (the history misses this run).
// An interrupted deploy still records what it published.
func (opts Options) recordHistory(ctx context.Context, root string, rows []Row) (runID string, warnings []string) {
	if opts.DryRun {
		return "", nil
	}
	now := time.Now()
	runID = newRunID(now)
	var pubs []history.Publication
	for _, r := range rows {
		if r.Status == publish.StatusPublished || r.Status == publish.StatusUpdated {
			pubs = append(pubs, history.Publication{Host: r.Host, Version: r.Version, ExpectedSystem: r.ExpectedToplevel, At: now, DeployRun: runID})
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), historyTimeout)
	defer cancel()
	path := history.Path(root)
	db, err := history.Open(ctx, path)
	if err != nil {
		return runID, []string{fmt.Sprintf("%v: this deploy is not in the history", err)}
	}
	defer db.Close()
	if err := db.RecordPublication(ctx, pubs...); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s: %v: this deploy is not in the history", path, err))
	}
	retention := opts.HistoryRetention
	if retention == 0 {
		retention = history.DefaultRetention
	}
	if _, err := db.Prune(ctx, now.Add(-retention)); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s: %v", path, err))
	}
	return runID, warnings
}
