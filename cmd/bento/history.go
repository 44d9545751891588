package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/status"
)

const historyDescription = `What the server observed, oldest first: each publication (bento deploy), each
change of a host's report as bento status (or status --watch, serve) read it, and
each rollout step. The history is <chroot-root>/.bento-state/history.db; bento
deploy prunes events older than --history-retention (default 90 days).

A report read again unchanged is not recorded again; a report that disappears,
becomes unreadable, comes back or goes back to an older one is recorded as such.
What hosts wrote is shown as data, made terminal-safe.

--since takes a duration back from now (24h, 7d, "1h 30min") or a date
(2026-12-01, local midnight) or an RFC 3339 time. See docs/status.md.`

func historyCommand() *cli.Command {
	return &cli.Command{
		Name:        "history",
		Usage:       "show what happened to the fleet, host by host: publications, reports, rollouts",
		ArgsUsage:   "[HOST|GLOB]...",
		Description: historyDescription,
		Flags: []cli.Flag{
			chrootRootFlag(),
			&cli.StringFlag{Name: "since", Usage: "only events since then: a duration back (24h, 7d) or a date (2026-12-01)"},
			&cli.IntFlag{Name: "limit", Value: 200, Usage: "show at most the newest N events (0: all)"},
			&cli.BoolFlag{Name: "json", Usage: "print the events as JSON for scripts"},
		},
		Action: runHistory,
	}
}

// historyRetentionFlag is bento deploy's --history-retention.
func historyRetentionFlag() cli.Flag {
	return &cli.StringFlag{Name: "history-retention", Value: "90d", EnvVars: []string{"BENTO_HISTORY_RETENTION"},
		Usage: "keep the server's history (bento history) this long; older events are pruned by each deploy (" + timespan.Syntax + ")"}
}

// historyRetention reads --history-retention.
func historyRetention(c *cli.Context) (time.Duration, error) {
	return positiveSpan(c, "history-retention", "")
}

// positiveSpan reads the time span flag, which must be positive; why
// ends the error that says so.
func positiveSpan(c *cli.Context, flag, why string) (time.Duration, error) {
	d, err := timespan.Parse(c.String(flag))
	if err != nil {
		return 0, usageError("--%s: %w", flag, err)
	}
	if d <= 0 {
		return 0, usageError("--%s must be positive (got %s)%s", flag, c.String(flag), why)
	}
	return d, nil
}

func runHistory(c *cli.Context) error {
	root := c.String("chroot-root")
	now := time.Now()
	since, err := parseSince(c.String("since"), now)
	if err != nil {
		return usageError("--since: %w", err)
	}
	if c.Int("limit") < 0 {
		return usageError("--limit must not be negative")
	}
	if err := checkHistoryArgs(c.Args().Slice()); err != nil {
		return err
	}
	path := history.Path(root)
	q := history.Query{Since: since, Limit: c.Int("limit")}
	if args := c.Args().Slice(); len(args) > 0 {
		if q.Hosts, err = historyHosts(c, path, root, args); err != nil {
			return err
		}
	}
	doc, err := history.Read(c.Context, root, q, now)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintf(c.App.ErrWriter, "bento: no history yet at %s (bento deploy and bento status record it)\n", path)
	case errors.Is(err, fs.ErrPermission):
		return failed(withHint(err, "the server's state directory is root-only: run bento history as root"))
	case err != nil:
		return failed(err)
	}
	return printHistory(c, doc, now)
}

// checkHistoryArgs refuses a flag after the host names, and tags.
func checkHistoryArgs(args []string) error {
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "-"):
			return usageError("%s comes after the host names: put flags first (bento history %s HOST…)", a, a)
		case strings.HasPrefix(a, "@"):
			return usageError("host selection %q: bento history does not evaluate the flake, so it knows no tags; name the hosts or use a glob", a)
		}
	}
	return nil
}

// historyHosts resolves names and globs against the hosts the history
// knows and the chroots the root holds (a host without events yet).
func historyHosts(c *cli.Context, path, root string, patterns []string) ([]string, error) {
	known, err := historyKnownHosts(c.Context, path)
	if err != nil {
		return nil, err
	}
	if names, err := status.ChrootHosts(root); err == nil {
		known = append(known, names...)
	}
	seen := map[string]bool{}
	var hosts []fleet.Host
	for _, n := range known {
		if !seen[n] && fleet.ValidateName(n) == nil {
			seen[n] = true
			hosts = append(hosts, fleet.Host{Name: n})
		}
	}
	picked, err := fleet.Select(hosts, patterns)
	if err != nil {
		return nil, usageError("%w", err)
	}
	out := make([]string, len(picked))
	for i, h := range picked {
		out[i] = h.Name
	}
	return out, nil
}

// historyKnownHosts are the hosts the history at path has events of;
// none when there is no history yet.
func historyKnownHosts(ctx context.Context, path string) ([]string, error) {
	db, err := history.OpenReadOnly(ctx, path)
	switch {
	case err == nil:
		defer db.Close()
		known, err := db.Hosts(ctx)
		if err != nil {
			return nil, failed(err)
		}
		return known, nil
	case errors.Is(err, fs.ErrPermission):
		return nil, failed(withHint(err, "the server's state directory is root-only: run bento history as root"))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, failed(err)
	}
	return nil, nil
}

// parseSince reads --since: empty, a duration back from now, a date
// (local midnight) or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := timespan.Parse(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a date (2026-12-01), an RFC 3339 time nor a duration back from now (24h, 7d)", s)
	}
	if d <= 0 {
		return time.Time{}, fmt.Errorf("%q: the duration must be positive", s)
	}
	return now.Add(-d), nil
}

func printHistory(c *cli.Context, doc *history.Document, now time.Time) error {
	w := c.App.Writer
	if c.Bool("json") {
		data, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return failed(err)
		}
		// Host-written strings stay what they were, but no control
		// character reaches a terminal raw.
		_, err = w.Write(append(termsafe.EscapeJSON(data), '\n'))
		return err
	}
	if len(doc.Events) == 0 {
		fmt.Fprintln(w, "no events")
		return nil
	}
	if err := historyTable(w, doc.Events, now); err != nil {
		return failed(err)
	}
	if doc.Truncated {
		fmt.Fprintf(w, "(older events left out: --limit %d; --since or --limit 0 shows more)\n", c.Int("limit"))
	}
	return nil
}

// historyTable prints one line per event, oldest first. A report that
// says again what the host's previous one said (a success, then
// "unchanged") is left out: --json has every event.
func historyTable(w io.Writer, events []history.Event, now time.Time) error {
	t := table.Table{Header: []string{"TIME", "AGO", "HOST", "EVENT"}}
	lastDay := ""
	prev := map[string]string{}
	for _, e := range events {
		if e.Kind == history.KindReport {
			key := e.State + "\x00" + e.Version + "\x00" + e.AppliedVersion + "\x00" + e.Error + "\x00" + e.Reason
			if prev[e.Host] == key {
				continue
			}
			prev[e.Host] = key
		} else {
			delete(prev, e.Host)
		}
		at := e.At.Local()
		// The date once per day, the zone always: times read alone.
		stamp := at.Format("15:04:05 MST")
		if day := at.Format("2006-01-02"); day != lastDay {
			stamp, lastDay = day+" "+stamp, day
		}
		host := e.Host
		if host == "" {
			host = "(fleet)"
		}
		t.Rows = append(t.Rows, []string{stamp, status.Ago(now.Sub(e.At)) + " ago", termsafe.Line(host), termsafe.Line(describeEvent(e))})
	}
	return t.Write(w)
}

// describeEvent says an event in words: "published 3f2a1b2c", "up-to-date
// 3f2a1b2c", "rolled back 3f2a1b2c: health-check".
func describeEvent(e history.Event) string {
	v := status.ShortVersion(e.Version)
	switch e.Kind {
	case history.KindPublished:
		return publishedWords(e, v)
	case history.KindReport:
		return reportWords(e, v)
	case history.KindReportRegressed:
		return "report went back to an older one: " + reportWords(e, v)
	case history.KindReportRestored:
		return "report back: " + reportWords(e, v)
	case history.KindReportGone:
		return "report gone"
	case history.KindReportUnreadable:
		if e.Error != "" {
			return "report unreadable: " + e.Error
		}
		return "report unreadable"
	case history.KindRollout:
		return rolloutWords(e)
	}
	return e.Kind
}

// publishedWords says what a publication event records.
func publishedWords(e history.Event, v string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "published %s", v)
	if e.ExpectedSystem != "" {
		fmt.Fprintf(&b, " (system %s)", shortSystem(e.ExpectedSystem))
	}
	if e.DeployRun != "" {
		fmt.Fprintf(&b, ", deploy %s", e.DeployRun)
	}
	return b.String()
}

// rolloutWords says what a rollout did, in which wave and why.
func rolloutWords(e history.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rollout %s", e.RolloutID)
	if e.Wave != nil {
		fmt.Fprintf(&b, " wave %d", *e.Wave)
	}
	b.WriteString(": " + e.Action)
	if e.Reason != "" {
		b.WriteString(" (" + e.Reason + ")")
	}
	return b.String()
}

// reportWords says what a report told: the state status saw, else the
// host's stage and result, with the version and why it failed.
func reportWords(e history.Event, v string) string {
	var b strings.Builder
	switch {
	case e.Result == "rolled-back":
		fmt.Fprintf(&b, "rolled back %s", v)
		if e.Reason != "" {
			b.WriteString(": " + e.Reason)
		}
	case e.State != "":
		b.WriteString(e.State + " " + v)
	default:
		fmt.Fprintf(&b, "%s %s (%s)", e.Result, v, e.Stage)
	}
	if e.Result != "rolled-back" && e.Reason != "" {
		b.WriteString(" (" + e.Reason + ")")
	}
	if e.Result == "failure" && e.Error != "" {
		fmt.Fprintf(&b, ": failed at %s: %s", e.Stage, e.Error)
	}
	if e.Log != "" {
		fmt.Fprintf(&b, " [log %s]", e.Log)
	}
	return strings.TrimSpace(b.String())
}

// shortSystem is a store path's name with the first 8 digits of its hash.
func shortSystem(p string) string {
	base := p[strings.LastIndexByte(p, '/')+1:]
	if len(base) > 33 && base[32] == '-' {
		return base[:8] + "…" + base[32:]
	}
	return base
}

// statusHistory opens the history status records into; nil (after one
// warning) when it cannot: a read-only chroot root, a state directory
// only root may write. Status goes on without it.
func statusHistory(c *cli.Context, root string) (*history.DB, func(error)) {
	var once sync.Once
	warn := func(err error) {
		once.Do(func() {
			fmt.Fprintf(c.App.ErrWriter, "bento: warning: %v (status goes on without recording its reports in the history)\n", err)
		})
	}
	if _, err := os.Stat(root); err != nil {
		// status says that the root is missing, better than this could.
		return nil, warn
	}
	db, err := history.Open(c.Context, history.Path(root))
	if err != nil {
		warn(err)
		return nil, warn
	}
	return db, warn
}
