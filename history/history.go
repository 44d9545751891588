// Package history keeps what the server observed about its fleet over time
// — each publication, each host report, each rollout step — in an SQLite
// database (<root>/.bento-state/history.db), so that "what happened, when,
// on which host" has an answer after status.json has been overwritten.
//
// The driver is modernc.org/sqlite: SQLite translated to Go, so bento stays
// one static binary without cgo (mattn/go-sqlite3 needs a C toolchain and
// libc at build time; ncruces/go-sqlite3 runs SQLite as WebAssembly through
// wazero, slower to start and a larger binary).
//
// Everything a host wrote (versions, systems, errors, log names) is stored
// as data, cut to a bounded size, and never interpreted; callers sanitise
// it on output (internal/termsafe), never here, so the database holds what
// the host said.
//
// Recording is idempotent: a report read twice is recorded once; a report
// that disappears, comes back or is replaced by an older one is recorded as
// that (KindReportGone, KindReportRestored, KindReportRegressed).
package history

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/bento-nix/bento/manifest"
)

// File is the database's name in the server's state directory
// (publish.StateDir under the chroot root).
const File = "history.db"

// DefaultRetention is how long events are kept unless configured.
const DefaultRetention = 90 * 24 * time.Hour

// Event kinds.
const (
	// KindPublished: bento deploy published a version for the host.
	KindPublished = "published"
	// KindReport: the host's report changed to one not seen before.
	KindReport = "report"
	// KindReportGone: the host's report, seen before, is no longer there.
	KindReportGone = "report-gone"
	// KindReportUnreadable: the host's report, seen before, is there but
	// cannot be read (invalid, over the reports/ limits).
	KindReportUnreadable = "report-unreadable"
	// KindReportRestored: the report that was gone (or unreadable) is
	// back, unchanged.
	KindReportRestored = "report-restored"
	// KindReportRegressed: the host's report went back to one recorded
	// earlier, or to one older than the last (by its finishedAt).
	KindReportRegressed = "report-regressed"
	// KindRollout: a rollout step (a wave started, paused, aborted…).
	KindRollout = "rollout"
)

// Bounds on host-written fields: what is longer is cut (and marked with
// "…"), so a hostile host cannot grow the database by megabytes a report.
const (
	maxShort = 256  // versions, states, log names, ids
	maxPath  = 4096 // store paths
	maxText  = 2048 // errors, reasons
)

// Publication is one version published for one host.
type Publication struct {
	Host           string
	Version        string
	ExpectedSystem string
	At             time.Time
	// DeployRun names the bento deploy run that published it; the
	// publications of one run share it.
	DeployRun string
}

// Observation is what a reader (status, serve, rollout) saw of one host's
// report at one moment.
type Observation struct {
	Host string
	// Report is the parsed reports/status.json; nil means the host has no
	// report (never had, or it was removed).
	Report *manifest.Report
	// Unreadable, with Report nil, says the report is there but could not
	// be used, and why (recorded as the event's error).
	Unreadable string
	// State is the reader's verdict (status.State, e.g. "up-to-date"),
	// recorded beside the host's own fields; optional.
	State string
	// Reason overrides the report's rollbackReason when the reader knows
	// more (e.g. "health-check nginx"); optional.
	Reason string
	// ObservedAt is when it was read (the server's clock); zero means now.
	ObservedAt time.Time
}

// RolloutStep is one step of a rollout.
type RolloutStep struct {
	RolloutID string
	Wave      int
	// Action: "start", "advance", "pause", "abort", "done"… (the rollout
	// package's words).
	Action string
	Reason string
	// Hosts the step concerns; empty records one fleet-wide event (host "").
	Hosts []string
	At    time.Time
}

// Event is one line of a timeline.
type Event struct {
	ID             int64      `json:"-"`
	At             time.Time  `json:"at"`
	Host           string     `json:"host"`
	Kind           string     `json:"kind"`
	Version        string     `json:"version,omitempty"`
	AppliedVersion string     `json:"appliedVersion,omitempty"`
	State          string     `json:"state,omitempty"`
	Stage          string     `json:"stage,omitempty"`
	Result         string     `json:"result,omitempty"`
	System         string     `json:"system,omitempty"`
	ExpectedSystem string     `json:"expectedSystem,omitempty"`
	Reason         string     `json:"reason,omitempty"`
	Error          string     `json:"error,omitempty"`
	Log            string     `json:"log,omitempty"`
	StartedAt      *time.Time `json:"startedAt,omitempty"`
	FinishedAt     *time.Time `json:"finishedAt,omitempty"`
	DeployRun      string     `json:"deployRun,omitempty"`
	RolloutID      string     `json:"rolloutId,omitempty"`
	Wave           *int       `json:"wave,omitempty"`
	Action         string     `json:"action,omitempty"`
}

// Query selects a timeline.
type Query struct {
	// Hosts restricts the timeline to these hosts (and, for rollout steps,
	// fleet-wide ones are left out); empty means the whole fleet.
	Hosts []string
	// Since is the earliest event time; zero means everything kept.
	Since time.Time
	// Until is the latest (exclusive); zero means now and later.
	Until time.Time
	// Limit keeps the newest Limit events (still returned oldest first);
	// 0 means no limit.
	Limit int
}

// DB is an open history database. Its methods may be called from several
// goroutines; writes are serialised (one writer at a time, in this process
// by a mutex, across processes by SQLite's lock and busy timeout), reads
// run concurrently (WAL).
type DB struct {
	db   *sql.DB
	path string
	// wmu serialises this process's writers, so they queue here instead
	// of spinning on SQLite's busy handler.
	wmu sync.Mutex
	// recorded, when set (by the crash test), is called inside
	// RecordReport's transaction after each event.
	recorded func(n int)
}

// Path is where a chroot root's history lives when the state directory is
// not configured elsewhere: <root>/.bento-state/history.db.
func Path(root string) string {
	return filepath.Join(root, ".bento-state", File)
}

// Open opens the database at path, creating it (and its directory, mode
// 0700, whose parent must exist: never a whole chroot root) if missing,
// and brings its schema up to date.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	return open(ctx, path, false)
}

// OpenReadOnly opens an existing database for reading only (bento history,
// a dashboard without write access). It fails with fs.ErrNotExist when
// there is no database yet.
func OpenReadOnly(ctx context.Context, path string) (*DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	return open(ctx, path, true)
}

func open(ctx context.Context, path string, readOnly bool) (*DB, error) {
	h, err := openWith(ctx, path, readOnly, false)
	if err != nil && readOnly && syscall.Access(filepath.Dir(path), 2) != nil { // W_OK
		// A reader of a WAL database needs its shared-memory file, which
		// a directory it cannot write (a read-only mount, root's state
		// directory read by a dashboard) cannot hold once the last writer
		// closed: read the file as it is instead. What a writer still
		// holds in its log is then not seen until it checkpoints (a
		// status or deploy does when it closes); each query takes a new
		// connection, so a long-running reader sees every checkpoint.
		if h2, err2 := openWith(ctx, path, true, true); err2 == nil {
			h2.db.SetMaxIdleConns(0)
			return h2, nil
		}
	}
	return h, err
}

func openWith(ctx context.Context, path string, readOnly, immutable bool) (*DB, error) {
	q := url.Values{}
	// WAL lets readers (status, serve, history) run while one writes;
	// synchronous=NORMAL in WAL mode loses no committed transaction on a
	// process crash (kill -9), only possibly the last ones on power loss,
	// and never leaves the database inconsistent.
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	if readOnly {
		q.Set("mode", "ro")
		if immutable {
			q.Set("immutable", "1")
		}
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// A checkpoint truncates the log back to this: the status of a
		// big first run must not leave a log the size of that batch.
		q.Add("_pragma", "journal_size_limit(8388608)")
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	h := &DB{db: sdb, path: path}
	if err := sdb.PingContext(ctx); err != nil {
		sdb.Close()
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	if readOnly {
		v, err := schemaVersion(ctx, sdb)
		if err != nil {
			sdb.Close()
			return nil, fmt.Errorf("history %s: %w", path, err)
		}
		if v > len(migrations()) {
			sdb.Close()
			return nil, fmt.Errorf("history %s: schema version %d is newer than this bento knows (%d); upgrade bento", path, v, len(migrations()))
		}
		return h, nil
	}
	if err := h.migrate(ctx); err != nil {
		sdb.Close()
		return nil, fmt.Errorf("history %s: %w", path, err)
	}
	return h, nil
}

// Close closes the database.
func (h *DB) Close() error { return h.db.Close() }

// Path returns the database file's path.
func (h *DB) Path() string { return h.path }

// Size is the bytes the database takes on disk: the file and its
// write-ahead log.
func (h *DB) Size(ctx context.Context) (int64, error) { return FileSize(h.path) }

// FileSize is the bytes the database at path takes on disk, without
// opening it (0 when there is none): for a reader that cannot open it.
func FileSize(path string) (int64, error) {
	var total int64
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("history size: %w", err)
		}
		total += fi.Size()
	}
	return total, nil
}

// write runs fn in one immediate transaction, this process's writers
// queued on wmu.
func (h *DB) write(ctx context.Context, fn func(*sql.Tx) error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	tx, err := h.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// RecordPublication records publications in one transaction. The same
// (host, version, deploy run) is recorded once.
func (h *DB) RecordPublication(ctx context.Context, pubs ...Publication) error {
	if len(pubs) == 0 {
		return nil
	}
	err := h.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx, `INSERT INTO events (at, host, kind, version, expected_system, deploy_run)
			VALUES (?, ?, 'published', ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return err
		}
		defer st.Close()
		known, err := tx.PrepareContext(ctx, knownHost)
		if err != nil {
			return err
		}
		defer known.Close()
		for _, p := range pubs {
			at := p.At
			if at.IsZero() {
				at = time.Now()
			}
			if _, err := st.ExecContext(ctx, at.UnixMilli(), bound(p.Host, maxShort), bound(p.Version, maxShort),
				bound(p.ExpectedSystem, maxPath), bound(p.DeployRun, maxShort)); err != nil {
				return fmt.Errorf("host %s: %w", p.Host, err)
			}
			if _, err := known.ExecContext(ctx, bound(p.Host, maxShort)); err != nil {
				return fmt.Errorf("host %s: %w", p.Host, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("history: record publications: %w", err)
	}
	return nil
}

// RecordRolloutStep records one rollout step: one event per host it
// names, or one fleet-wide event.
func (h *DB) RecordRolloutStep(ctx context.Context, s RolloutStep) error {
	at := s.At
	if at.IsZero() {
		at = time.Now()
	}
	hosts := s.Hosts
	if len(hosts) == 0 {
		hosts = []string{""}
	}
	err := h.write(ctx, func(tx *sql.Tx) error {
		for _, host := range hosts {
			if _, err := tx.ExecContext(ctx, `INSERT INTO events (at, host, kind, rollout_id, wave, action, reason)
				VALUES (?, ?, 'rollout', ?, ?, ?, ?)`, at.UnixMilli(), bound(host, maxShort), bound(s.RolloutID, maxShort),
				s.Wave, bound(s.Action, maxShort), bound(s.Reason, maxText)); err != nil {
				return err
			}
			if host != "" {
				if _, err := tx.ExecContext(ctx, knownHost, bound(host, maxShort)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("history: record rollout %s step: %w", s.RolloutID, err)
	}
	return nil
}

// knownHost makes a host known (Hosts lists it) before any report.
const knownHost = `INSERT INTO hosts (host, report_hash, finished_at) VALUES (?, '', 0) ON CONFLICT DO NOTHING`

// Hosts lists the hosts the history knows, by name.
func (h *DB) Hosts(ctx context.Context) ([]string, error) {
	rows, err := h.db.QueryContext(ctx, `SELECT host FROM hosts ORDER BY host`)
	if err != nil {
		return nil, fmt.Errorf("history: hosts: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var host string
		if err := rows.Scan(&host); err != nil {
			return nil, fmt.Errorf("history: hosts: %w", err)
		}
		out = append(out, host)
	}
	return out, rows.Err()
}

// lastReport is what the hosts table remembers of a host's latest report.
type lastReport struct {
	hash       string
	finishedAt int64
	absence    absence
}

// absence is why a host's last observation had no usable report.
type absence int

const (
	present absence = iota
	gone
	unreadable
)

func (o Observation) absence() absence {
	switch {
	case o.Report != nil:
		return present
	case o.Unreadable != "":
		return unreadable
	}
	return gone
}

// RecordReport records what readers observed of hosts' reports, all in
// one transaction, and only what changed since the last observation: a
// status run over a fleet that did nothing new writes nothing. It returns
// how many events it recorded.
func (h *DB) RecordReport(ctx context.Context, obs ...Observation) (int, error) {
	if len(obs) == 0 {
		return 0, nil
	}
	hashes := reportHashes(obs)
	// A read before the write: the common case (nothing changed) takes no
	// write lock at all, so status never waits for a busy writer.
	last, err := h.lastReports(ctx, h.db)
	if err != nil {
		return 0, fmt.Errorf("history: record reports: %w", err)
	}
	changed := changedObservations(obs, hashes, last)
	if len(changed) == 0 {
		return 0, nil
	}
	n, err := h.recordChanged(ctx, obs, hashes, changed)
	if err != nil {
		return 0, fmt.Errorf("history: record reports: %w", err)
	}
	return n, nil
}

// reportHashes are the hashes of the observed reports ("" where none).
func reportHashes(obs []Observation) []string {
	hashes := make([]string, len(obs))
	for i, o := range obs {
		if o.Report != nil {
			hashes[i] = reportHash(o.Report)
		}
	}
	return hashes
}

// changedObservations are the indexes of the observations that are events
// after last (see changes).
func changedObservations(obs []Observation, hashes []string, last map[string]lastReport) []int {
	var changed []int
	for i, o := range obs {
		if changes(last[bound(o.Host, maxShort)], hashes[i], o.absence()) {
			changed = append(changed, i)
		}
	}
	return changed
}

// recordChanged records the changed observations in one transaction and
// returns how many events it recorded.
func (h *DB) recordChanged(ctx context.Context, obs []Observation, hashes []string, changed []int) (int, error) {
	n := 0
	err := h.write(ctx, func(tx *sql.Tx) error {
		n = 0
		// Read again under the write lock: another process may have
		// recorded the same reports since.
		last, err := h.lastReports(ctx, tx)
		if err != nil {
			return err
		}
		for _, i := range changed {
			k, err := recordOne(ctx, tx, obs[i], hashes[i], last)
			if err != nil {
				return fmt.Errorf("host %s: %w", obs[i].Host, err)
			}
			n += k
			if h.recorded != nil {
				h.recorded(n)
			}
		}
		return nil
	})
	return n, err
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (h *DB) lastReports(ctx context.Context, q querier) (map[string]lastReport, error) {
	rows, err := q.QueryContext(ctx, `SELECT host, report_hash, finished_at, absence FROM hosts`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]lastReport)
	for rows.Next() {
		var host string
		var l lastReport
		if err := rows.Scan(&host, &l.hash, &l.finishedAt, &l.absence); err != nil {
			return nil, err
		}
		out[host] = l
	}
	return out, rows.Err()
}

// changes tells whether observing hash (or its absence a) after l is an
// event. A host that never had a report has nothing to lose.
func changes(l lastReport, hash string, a absence) bool {
	if a != present {
		return l.hash != "" && l.absence != a
	}
	return l.hash != hash || l.absence != present
}

// recordOne records o as an event when it changes what is known of its
// host (see changes), and returns how many events it recorded.
func recordOne(ctx context.Context, tx *sql.Tx, o Observation, hash string, last map[string]lastReport) (int, error) {
	host := bound(o.Host, maxShort)
	l := last[host]
	a := o.absence()
	if !changes(l, hash, a) {
		return 0, nil
	}
	now := o.ObservedAt
	if now.IsZero() {
		now = time.Now()
	}
	if a != present {
		return recordAbsence(ctx, tx, o, host, a, now, last)
	}
	finished := millis(o.Report.FinishedAt)
	kind, err := reportKind(ctx, tx, l, host, hash, finished)
	if err != nil {
		return 0, err
	}
	if err := recordReport(ctx, tx, o, host, hash, kind, now); err != nil {
		return 0, err
	}
	last[host] = lastReport{hash: hash, finishedAt: finished}
	return 1, nil
}

// recordAbsence records a host's report gone or unreadable.
func recordAbsence(ctx context.Context, tx *sql.Tx, o Observation, host string, a absence, now time.Time, last map[string]lastReport) (int, error) {
	kind := KindReportGone
	if a == unreadable {
		kind = KindReportUnreadable
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (at, host, kind, state, error) VALUES (?, ?, ?, ?, ?)`,
		now.UnixMilli(), host, kind, bound(o.State, maxShort), bound(o.Unreadable, maxText)); err != nil {
		return 0, err
	}
	_, err := tx.ExecContext(ctx, `UPDATE hosts SET absence = ? WHERE host = ?`, a, host)
	l := last[host]
	l.absence = a
	last[host] = l
	return 1, err
}

// reportKind tells a new report from one back unchanged after it was
// gone (restored) and from one going back (regressed): an older
// finishedAt, or a report already recorded, even if not the last.
func reportKind(ctx context.Context, tx *sql.Tx, l lastReport, host, hash string, finished int64) (string, error) {
	switch {
	case l.absence != present && l.hash == hash:
		return KindReportRestored, nil
	case l.hash != "" && finished < l.finishedAt:
		return KindReportRegressed, nil
	}
	var seen int
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE host = ? AND kind = 'report' AND report_hash = ?`, host, hash).Scan(&seen)
	if err != nil {
		return "", err
	}
	if seen > 0 {
		return KindReportRegressed, nil
	}
	return KindReport, nil
}

// recordReport records o's report as an event of kind, and makes it the
// host's last.
func recordReport(ctx context.Context, tx *sql.Tx, o Observation, host, hash, kind string, now time.Time) error {
	r := o.Report
	reason := o.Reason
	if reason == "" {
		reason = reasonOf(r)
	}
	system := r.CurrentSystem
	if system == "" {
		system = r.ActualToplevel
	}
	at := plausible(r.FinishedAt, now)
	if kind != KindReport {
		// A report going back is news now, whatever time it claims.
		at = now
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO events (at, host, kind, version, applied_version, state, stage, result,
			system, expected_system, reason, error, log, started_at, finished_at, report_hash)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
		at.UnixMilli(), host, kind, bound(r.AttemptedVersion, maxShort), bound(r.AppliedVersion, maxShort),
		bound(o.State, maxShort), bound(string(r.Stage), maxShort), bound(string(r.Result), maxShort),
		bound(system, maxPath), bound(r.ExpectedToplevel, maxPath), bound(reason, maxText), bound(r.Error, maxText),
		bound(r.Log, maxShort), nullMillis(r.StartedAt), nullMillis(r.FinishedAt), hash); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO hosts (host, report_hash, finished_at, absence) VALUES (?, ?, ?, 0)
			ON CONFLICT (host) DO UPDATE SET report_hash = excluded.report_hash, finished_at = excluded.finished_at, absence = 0`,
		host, hash, millis(r.FinishedAt))
	return err
}

// Prune deletes the events older than before and returns how many.
func (h *DB) Prune(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := h.write(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE at < ?`, before.UnixMilli())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("history: prune before %s: %w", before.Format(time.RFC3339), err)
	}
	return n, nil
}

// Timeline returns the events q selects, oldest first.
func (h *DB) Timeline(ctx context.Context, q Query) ([]Event, error) {
	where, args, limit := q.clauses()
	rows, err := h.db.QueryContext(ctx, `SELECT id, at, host, kind, version, applied_version, state, stage, result, system,
		expected_system, reason, error, log, started_at, finished_at, deploy_run, rollout_id, wave, action
		FROM events `+where+` ORDER BY at DESC, id DESC`+limit, args...)
	if err != nil {
		return nil, fmt.Errorf("history: timeline: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("history: timeline: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("history: timeline: %w", err)
	}
	slices.Reverse(out)
	return out, nil
}

// clauses are the query's WHERE clause with its arguments, and its LIMIT
// clause ("" for none).
func (q Query) clauses() (where string, args []any, limit string) {
	where, args = "WHERE at >= ?", []any{int64(0)}
	if !q.Since.IsZero() {
		args[0] = q.Since.UnixMilli()
	}
	if !q.Until.IsZero() {
		where += " AND at < ?"
		args = append(args, q.Until.UnixMilli())
	}
	if len(q.Hosts) > 0 {
		where += " AND host IN (?" + repeat(",?", len(q.Hosts)-1) + ")"
		for _, host := range q.Hosts {
			args = append(args, host)
		}
	}
	if q.Limit > 0 {
		limit = fmt.Sprintf(" LIMIT %d", q.Limit)
	}
	return where, args, limit
}

// scanEvent reads the timeline row rows is at.
func scanEvent(rows *sql.Rows) (Event, error) {
	var e Event
	var at int64
	var started, finished, wave sql.NullInt64
	if err := rows.Scan(&e.ID, &at, &e.Host, &e.Kind, &e.Version, &e.AppliedVersion, &e.State, &e.Stage, &e.Result,
		&e.System, &e.ExpectedSystem, &e.Reason, &e.Error, &e.Log, &started, &finished, &e.DeployRun,
		&e.RolloutID, &wave, &e.Action); err != nil {
		return Event{}, err
	}
	e.At = time.UnixMilli(at).UTC()
	e.StartedAt, e.FinishedAt = timeOf(started), timeOf(finished)
	if wave.Valid {
		w := int(wave.Int64)
		e.Wave = &w
	}
	return e, nil
}

func repeat(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}

// reasonOf says why a report is not plain success: the rollback
// trigger, with the failing health checks by name ("health-check nginx,
// db"), or the checks an applied system fails ("unhealthy: nginx").
func reasonOf(r *manifest.Report) string {
	var failing []string
	if r.Health != nil && !r.Health.OK {
		for _, c := range r.Health.Checks {
			if !c.OK && len(failing) < 16 {
				failing = append(failing, c.Name)
			}
		}
	}
	names := strings.Join(failing, ", ")
	switch {
	case r.RollbackReason == manifest.RollbackHealthCheck && names != "":
		return r.RollbackReason + " " + names
	case r.RollbackReason != "":
		return r.RollbackReason
	case names != "":
		return "unhealthy: " + names
	}
	return ""
}

// reportHash names a report's content. The report is re-encoded rather
// than hashed as read, so that whitespace alone is no change; the times of
// an "unchanged" report are left out, as the agent's heartbeat does (it
// only moves them, and status dates the report by its file's mtime), so
// that a quiet host is one event, not one per poll.
func reportHash(r *manifest.Report) string {
	c := *r
	if c.Result == manifest.ResultUnchanged {
		c.StartedAt, c.FinishedAt = time.Time{}, time.Time{}
	}
	data, err := json.Marshal(&c)
	if err != nil {
		data = fmt.Appendf(nil, "%#v", r)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:16])
}

// bound cuts s to at most n bytes, at a rune boundary, marking the cut.
func bound(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// plausible is the host's claimed time t when it is believable (not
// zero, not after now plus a little clock skew), else now: a host's
// clock orders its own events, the server's bounds them.
func plausible(t, now time.Time) time.Time {
	if t.IsZero() || t.After(now.Add(5*time.Minute)) || t.Before(now.Add(-10*365*24*time.Hour)) {
		return now
	}
	return t
}

func millis(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func nullMillis(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

func timeOf(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := time.UnixMilli(n.Int64).UTC()
	return &t
}
