package history

import (
	"context"
	"errors"
	"io/fs"
	"time"
)

// DocumentFormat is the version of Document's JSON.
const DocumentFormat = 1

// Document is bento history --json; a dashboard's /api/history serves the
// same (Read makes both).
type Document struct {
	Format      int       `json:"format"`
	GeneratedAt time.Time `json:"generatedAt"`
	Root        string    `json:"root"`
	// Since is the earliest time asked for; null for everything kept.
	Since *time.Time `json:"since"`
	// Truncated: older events matched, but the query's Limit left them out.
	Truncated bool    `json:"truncated"`
	Events    []Event `json:"events"`
}

// Read opens the history of the chroot root read-only and returns the
// events q selects as a Document. A root without a history yet gives an
// empty document and an error that is fs.ErrNotExist. q.Hosts are names
// (resolve globs first, e.g. against Hosts).
func Read(ctx context.Context, root string, q Query, now time.Time) (*Document, error) {
	doc := &Document{Format: DocumentFormat, GeneratedAt: now.UTC(), Root: root, Events: []Event{}}
	if !q.Since.IsZero() {
		since := q.Since.UTC()
		doc.Since = &since
	}
	db, err := OpenReadOnly(ctx, Path(root))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return doc, err
		}
		return nil, err
	}
	defer db.Close()
	return doc, db.fill(ctx, doc, q)
}

// Document returns the events q selects as a Document (for a caller that
// holds the database open, such as a dashboard).
func (h *DB) Document(ctx context.Context, root string, q Query, now time.Time) (*Document, error) {
	doc := &Document{Format: DocumentFormat, GeneratedAt: now.UTC(), Root: root, Events: []Event{}}
	if !q.Since.IsZero() {
		since := q.Since.UTC()
		doc.Since = &since
	}
	return doc, h.fill(ctx, doc, q)
}

func (h *DB) fill(ctx context.Context, doc *Document, q Query) error {
	limit := q.Limit
	if limit > 0 {
		// One more than asked tells whether older events were left out.
		q.Limit = limit + 1
	}
	events, err := h.Timeline(ctx, q)
	if err != nil {
		return err
	}
	if limit > 0 && len(events) > limit {
		events, doc.Truncated = events[len(events)-limit:], true
	}
	doc.Events = append(doc.Events, events...)
	return nil
}
