package status

import (
	"context"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
)

// seenReport is what Collect read of a host's report, for the history.
type seenReport struct {
	// known: the chroot could be opened, so the report's presence or
	// absence is a fact (a chroot that cannot be opened says nothing).
	known      bool
	report     *manifest.Report
	unreadable string
}

func (in *hostInput) seen() seenReport {
	s := seenReport{known: in.opened, report: in.report}
	switch {
	case in.reportErr != nil:
		s.unreadable = in.reportErr.Error()
	case in.reports.Exceeded():
		s.unreadable = "reports/ over its limits"
	}
	if s.unreadable != "" {
		s.report = nil
	}
	return s
}

// record writes what changed since the last reading into o.History (one
// transaction, nothing when nothing changed) and the database's size into
// the snapshot. A failure is a warning: the history never stops status.
func (o Options) record(ctx context.Context, s *Snapshot, rows []Row) {
	if o.History == nil {
		return
	}
	obs := make([]history.Observation, 0, len(rows))
	for i := range rows {
		r := &rows[i]
		if !r.seen.known {
			continue
		}
		obs = append(obs, history.Observation{Host: r.Host, Report: r.seen.report, Unreadable: r.seen.unreadable,
			State: string(r.State), ObservedAt: o.Now})
	}
	if _, err := o.History.RecordReport(ctx, obs...); err != nil && o.HistoryWarn != nil {
		o.HistoryWarn(err)
	}
	if n, err := o.History.Size(ctx); err == nil {
		s.HistoryBytes = n
	}
}

// ChrootHosts lists the host directories of a chroot root (what status
// shows without a flake).
func ChrootHosts(root string) ([]string, error) { return chrootHosts(root) }
