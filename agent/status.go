package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/agent/queue"
	"github.com/bento-nix/bento/internal/flock"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
)

// HostStatus is what the agent's state directory says about this host,
// for "bento agent status": the host's own view, without the server.
type HostStatus struct {
	Host     string `json:"host"`
	StateDir string `json:"stateDir"`
	// AppliedVersion and AppliedSystem: the publication in effect.
	AppliedVersion string `json:"appliedVersion"`
	AppliedSystem  string `json:"appliedSystem"`
	// Attempt is the last attempt (nil when there was none).
	Attempt *Attempt `json:"attempt"`
	// NextRetry is when a failed attempt is tried again under the current
	// retry policy (nil when nothing waits).
	NextRetry *time.Time `json:"nextRetry"`
	// Unconfirmed is an activation the server has not confirmed yet: a
	// tick rolls it back after its ConfirmBy unless the server answers.
	Unconfirmed *SwitchJournal `json:"unconfirmed"`
	// AwaitingBoot is a boot operation whose health checks run once the
	// machine booted its system (not a trouble: it waits for the reboot).
	AwaitingBoot *SwitchJournal `json:"awaitingBoot,omitempty"`
	// QueuedReports wait for the server.
	QueuedReports int `json:"queuedReports"`
	// PendingReboot is a planned reboot (nil when none).
	PendingReboot *activate.PendingReboot `json:"pendingReboot"`
	// TickRunning: a tick holds the lock now (TickHolder: its pid, as the
	// lock file says).
	TickRunning bool   `json:"tickRunning"`
	TickHolder  string `json:"tickHolder,omitempty"`
	// LastReport is the last report made (nil when none).
	LastReport *manifest.Report `json:"lastReport"`
	// Problems are state files that could not be read; a tick moves them
	// aside and carries on.
	Problems []string `json:"problems,omitempty"`
}

// ReadStatus reads the state directory of cfg without changing anything
// (a damaged file is named in Problems, not moved aside) and without
// contacting the server.
func ReadStatus(cfg Config, now time.Time) (*HostStatus, error) {
	if err := cfg.Complete(); err != nil {
		return nil, &ConfigError{err}
	}
	dir := cfg.StateDir
	if err := checkStateDir(dir); err != nil {
		return nil, err
	}
	s := &HostStatus{Host: cfg.Host, StateDir: dir}
	s.readState(filepath.Join(dir, stateFile), now, cfg.retryPolicy())
	var p activate.PendingReboot
	if readJSON(filepath.Join(dir, activate.PendingFile), &p, s) && !p.At.IsZero() {
		s.PendingReboot = &p
	}
	var r manifest.Report
	if readJSON(filepath.Join(dir, lastReportFile), &r, s) {
		s.LastReport = &r
	}
	s.countQueued(filepath.Join(dir, queueDir))
	s.TickRunning, s.TickHolder = tickRunning(filepath.Join(dir, lockFile))
	return s, nil
}

// checkStateDir says why dir cannot be read as a state directory.
func checkStateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil && fi.IsDir() {
		return nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state directory %s does not exist: this host has not run a tick yet (bento agent run)", dir)
	}
	if err == nil {
		err = errors.New("not a directory")
	}
	return fmt.Errorf("state directory %s: %w", dir, err)
}

// readState fills in what the state file at path says: the applied
// version, the last attempt and its retry, a switch not settled yet.
func (s *HostStatus) readState(path string, now time.Time, retry backoff.Policy) {
	var st State
	if !readJSON(path, &st, s) {
		return
	}
	s.AppliedVersion, s.AppliedSystem = st.AppliedVersion, st.AppliedSystem
	if st.Attempt.Version != "" {
		a := st.Attempt
		s.Attempt = &a
		if d, due := decide(st, a.Version, a.Expected, now, retry); d == waitRetry {
			s.NextRetry = &due
		}
	}
	if bootPending(st) {
		s.AwaitingBoot = st.Switch
	} else {
		s.Unconfirmed = st.Switch
	}
}

// countQueued counts the reports waiting in the queue at dir.
func (s *HostStatus) countQueued(dir string) {
	if entries, err := (&queue.Queue{Dir: dir}).List(); err == nil {
		s.QueuedReports = len(entries)
	} else if !errors.Is(err, fs.ErrNotExist) {
		s.Problems = append(s.Problems, fmt.Sprintf("report queue: %v", err))
	}
}

// readJSON decodes the state file path into v: false when it is missing or
// unusable (then named in s.Problems).
func readJSON(path string, v any, s *HostStatus) bool {
	data, err := statefile.Read(path, maxStateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err == nil {
		err = json.Unmarshal(data, v)
	}
	if err != nil {
		s.Problems = append(s.Problems, fmt.Sprintf("%s: %v (the next tick moves it aside)", filepath.Base(path), err))
		return false
	}
	return true
}

// tickRunning tells whether a tick holds the state lock, by trying a
// shared lock that a running tick's exclusive one refuses; nothing waits.
func tickRunning(path string) (bool, string) {
	l, err := flock.Acquire(context.Background(), path, flock.Options{Shared: true, NoWait: true, Existing: true})
	if errors.Is(err, flock.ErrHeld) {
		return true, flock.Holder(path)
	}
	if err == nil {
		l.Release()
	}
	return false, ""
}
