package history

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// migrations returns the schema's steps in order: step i brings the
// database from version i to i+1. A step, once released, is never edited;
// a change of schema is a new step at the end.
func migrations() []func(context.Context, *sql.Tx) error {
	return []func(context.Context, *sql.Tx) error{
		migrate1Events,
	}
}

// migrate1Events creates the event log and the per-host memory of the
// last report that makes recording idempotent.
func migrate1Events(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `
CREATE TABLE events (
	id              INTEGER PRIMARY KEY,
	at              INTEGER NOT NULL, -- unix milliseconds
	host            TEXT NOT NULL,    -- '' for a fleet-wide rollout step
	kind            TEXT NOT NULL,
	version         TEXT NOT NULL DEFAULT '',
	applied_version TEXT NOT NULL DEFAULT '',
	state           TEXT NOT NULL DEFAULT '',
	stage           TEXT NOT NULL DEFAULT '',
	result          TEXT NOT NULL DEFAULT '',
	system          TEXT NOT NULL DEFAULT '',
	expected_system TEXT NOT NULL DEFAULT '',
	reason          TEXT NOT NULL DEFAULT '',
	error           TEXT NOT NULL DEFAULT '',
	log             TEXT NOT NULL DEFAULT '',
	started_at      INTEGER,
	finished_at     INTEGER,
	report_hash     TEXT NOT NULL DEFAULT '',
	deploy_run      TEXT NOT NULL DEFAULT '',
	rollout_id      TEXT NOT NULL DEFAULT '',
	wave            INTEGER,
	action          TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_host_at ON events (host, at);
CREATE INDEX events_at ON events (at);
-- The same report is one event, the same publication too.
CREATE UNIQUE INDEX events_report ON events (host, report_hash) WHERE kind = 'report';
CREATE UNIQUE INDEX events_published ON events (host, version, deploy_run) WHERE kind = 'published';
-- The last report seen per host: what the next observation is compared with.
CREATE TABLE hosts (
	host        TEXT PRIMARY KEY,
	report_hash TEXT NOT NULL,
	finished_at INTEGER NOT NULL,
	absence     INTEGER NOT NULL DEFAULT 0 -- 0 present, 1 gone, 2 unreadable
) WITHOUT ROWID;
`)
	return err
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	rows, err := q.QueryContext(ctx, `SELECT version FROM schema_version`)
	if err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return 0, nil
		}
		return 0, err
	}
	defer rows.Close()
	v := 0
	for rows.Next() {
		if err := rows.Scan(&v); err != nil {
			return 0, err
		}
	}
	return v, rows.Err()
}

// migrate applies the steps the database lacks, each in its own
// transaction with the version it reaches, so a crash between steps
// leaves a database at one version, never between two.
func (h *DB) migrate(ctx context.Context) error {
	steps := migrations()
	// Up to date, the common case, is a read: opening the history never
	// waits for another process's write.
	if v, err := schemaVersion(ctx, h.db); err == nil && v == len(steps) {
		return nil
	}
	for {
		done := false
		err := h.write(ctx, func(tx *sql.Tx) error {
			var err error
			done, err = migrateStep(ctx, tx, steps)
			return err
		})
		if err != nil {
			return err
		}
		if done {
			return nil
		}
	}
}

// migrateStep applies, in tx, the step that follows the database's
// version, with the version it reaches; done: the database had them all.
func migrateStep(ctx context.Context, tx *sql.Tx, steps []func(context.Context, *sql.Tx) error) (done bool, err error) {
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return false, err
	}
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return false, err
	}
	switch {
	case v > len(steps):
		return false, fmt.Errorf("schema version %d is newer than this bento knows (%d); upgrade bento", v, len(steps))
	case v == len(steps):
		return true, nil
	}
	if err := steps[v](ctx, tx); err != nil {
		return false, fmt.Errorf("migration %d: %w", v+1, err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM schema_version`); err != nil {
		return false, err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (?)`, v+1)
	return false, err
}
