// Package queue keeps the reports a host could not deliver. Every report
// is put in the queue first (durably: temp file, fsync, rename) and removed
// only once the server has it, so a server that is down, or an agent that
// is killed, loses nothing; entries are delivered in the order they were
// made.
package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/manifest"
)

// Queue is a directory of pending reports.
type Queue struct {
	Dir string
	// Max bounds the entries kept; the oldest are dropped beyond it (a
	// host cut off for months must not fill its disk). 100 when zero.
	Max int
}

// Entry is one pending report with its log.
type Entry struct {
	Seq    int64           `json:"seq"`
	Report manifest.Report `json:"report"`
	// LogName is the name the log gets under reports/logs/ ("" without log).
	LogName string `json:"logName,omitempty"`
	// HasLog says a log file is stored beside the entry.
	HasLog bool `json:"hasLog,omitempty"`
}

const (
	entrySuffix = ".json"
	logSuffix   = ".log"
)

func (q *Queue) max() int {
	if q.Max <= 0 {
		return 100
	}
	return q.Max
}

func (q *Queue) name(seq int64, suffix string) string {
	return filepath.Join(q.Dir, fmt.Sprintf("%012d%s", seq, suffix))
}

// Put adds a report and its log (the bytes that go to reports/logs/logName;
// nil for none). It returns once both are on disk.
func (q *Queue) Put(rep manifest.Report, logName string, log []byte) (Entry, error) {
	if err := os.MkdirAll(q.Dir, 0o700); err != nil {
		return Entry{}, fmt.Errorf("report queue: %w", err)
	}
	entries, err := q.List()
	if err != nil {
		return Entry{}, err
	}
	var seq int64 = 1
	if len(entries) > 0 {
		seq = entries[len(entries)-1].Seq + 1
	}
	e := Entry{Seq: seq, Report: rep, LogName: logName, HasLog: log != nil}
	// The log first: an entry whose log is missing would be delivered
	// without it, a log without entry is removed by List.
	if log != nil {
		if err := writeAtomic(q.name(seq, logSuffix), log); err != nil {
			return Entry{}, fmt.Errorf("report queue: %w", err)
		}
	}
	data, err := json.Marshal(e)
	if err != nil {
		return Entry{}, err
	}
	if err := writeAtomic(q.name(seq, entrySuffix), data); err != nil {
		return Entry{}, fmt.Errorf("report queue: %w", err)
	}
	entries = append(entries, e)
	for len(entries) > q.max() {
		if err := q.Done(entries[0]); err != nil {
			return e, err
		}
		entries = entries[1:]
	}
	return e, nil
}

// List returns the pending entries, oldest first. Half-written leftovers
// of a killed agent (temporary files, logs without entry) are removed.
func (q *Queue) List() ([]Entry, error) {
	des, err := os.ReadDir(q.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("report queue: %w", err)
	}
	have := map[int64]bool{}
	var out []Entry
	var logs []int64
	for _, d := range des {
		n := d.Name()
		if strings.HasPrefix(n, ".") {
			os.Remove(filepath.Join(q.Dir, n))
			continue
		}
		seq, suffix, ok := parseName(n)
		if !ok {
			continue
		}
		switch suffix {
		case logSuffix:
			logs = append(logs, seq)
		case entrySuffix:
			e, ok, err := q.readEntry(n, seq)
			if err != nil {
				return nil, err
			}
			if ok {
				have[seq] = true
				out = append(out, e)
			}
		}
	}
	q.removeOrphanLogs(logs, have)
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

// parseName reads a queue file's name (see name); ok is false for a
// name that is not one.
func parseName(n string) (seq int64, suffix string, ok bool) {
	base, suffix, ok := strings.Cut(n, ".")
	seq, err := strconv.ParseInt(base, 10, 64)
	return seq, "." + suffix, ok && err == nil
}

// readEntry reads the entry file n of sequence seq; ok is false for a
// damaged one, which is removed.
func (q *Queue) readEntry(n string, seq int64) (e Entry, ok bool, err error) {
	data, err := os.ReadFile(filepath.Join(q.Dir, n))
	if err != nil {
		return Entry{}, false, fmt.Errorf("report queue: %w", err)
	}
	if err := json.Unmarshal(data, &e); err != nil || e.Seq != seq {
		// Written atomically, so damaged from outside: it can
		// never be delivered, and must not block the others.
		os.Remove(filepath.Join(q.Dir, n))
		return Entry{}, false, nil
	}
	return e, true, nil
}

// removeOrphanLogs removes the logs whose entry is not there (have).
func (q *Queue) removeOrphanLogs(logs []int64, have map[int64]bool) {
	for _, seq := range logs {
		if !have[seq] {
			os.Remove(q.name(seq, logSuffix))
		}
	}
}

// Log returns the stored log of e.
func (q *Queue) Log(e Entry) ([]byte, error) {
	if !e.HasLog {
		return nil, nil
	}
	data, err := os.ReadFile(q.name(e.Seq, logSuffix))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return data, err
}

// Done removes a delivered entry (the entry first, so a crash in between
// leaves a log without entry, which List cleans up).
func (q *Queue) Done(e Entry) error {
	if err := os.Remove(q.name(e.Seq, entrySuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("report queue: %w", err)
	}
	if err := os.Remove(q.name(e.Seq, logSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("report queue: %w", err)
	}
	return nil
}

// writeAtomic keeps queued reports private to root (0600): they name the
// host's systems and errors.
func writeAtomic(path string, data []byte) error {
	return atomicfile.WriteFile(path, data, 0o600)
}
