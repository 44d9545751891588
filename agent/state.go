package agent

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/internal/atomicfile"
	"github.com/bento-nix/bento/internal/statefile"
	"github.com/bento-nix/bento/manifest"
)

// Names inside the state directory.
const (
	stateFile      = "state.json"
	lastReportFile = "last-report.json"
	// deliveredFile holds the fingerprint of the report last written to
	// the server's status.json (heartbeat.go).
	deliveredFile = "delivered-report"
	lockFile      = "lock"
	treesDir      = "config"
	objectsDir    = "objects"
	queueDir      = "queue"
	logsDir       = "logs"
)

// State is what the agent remembers between ticks. It is saved atomically
// at every step that matters, so a tick killed anywhere leaves a state the
// next tick recovers from.
type State struct {
	// AppliedVersion is the publication whose system is active;
	// AppliedSystem is that system.
	AppliedVersion string `json:"appliedVersion,omitempty"`
	AppliedSystem  string `json:"appliedSystem,omitempty"`
	// Attempt is the last attempt.
	Attempt Attempt `json:"attempt"`
	// Switch is the journal of an activation under way: saved before the
	// profile is touched, cleared with the attempt's outcome. A state
	// loaded with it set belongs to an agent that died between the two,
	// and the next tick settles it (recoverSwitch) before anything else.
	Switch *SwitchJournal `json:"switch,omitempty"`
	// Publication is the newest publication this host accepted: no older
	// sequence is accepted after it (signing.go).
	Publication Publication `json:"publication,omitzero"`
	// RotationKeys are publication keys announced by accepted manifests
	// signed by a pinned key (name:base64), pinned besides the
	// configured ones.
	RotationKeys []string `json:"rotationKeys,omitempty"`
}

// Publication names an accepted publication.
type Publication struct {
	Sequence uint64 `json:"sequence,omitempty"`
	Version  string `json:"version,omitempty"`
}

// SwitchJournal is "switched to To from From at At, confirm by ConfirmBy".
type SwitchJournal struct {
	Version string `json:"version"`
	To      string `json:"to"`
	// From is the system that ran before ("" on a first installation),
	// FromVersion the version it was applied from.
	From        string `json:"from,omitempty"`
	FromVersion string `json:"fromVersion,omitempty"`
	// Op is the operation (switch, boot, test).
	Op string    `json:"op"`
	At time.Time `json:"at"`
	// ConfirmBy is when an unconfirmed switch is rolled back.
	ConfirmBy time.Time `json:"confirmBy"`
	// Phase is "switching" until the guard decides to roll back, then
	// "rolling-back": a machine found on From is then known to have been
	// rolled back on purpose. "health-checking" while the health checks
	// run: a kill then leaves a system nobody found healthy, rolled back
	// by the next start. "boot-pending": a boot operation recorded as
	// switched whose health checks run once the machine booted To.
	Phase string `json:"phase"`
}

// Phases of a SwitchJournal.
const (
	phaseSwitching   = "switching"
	phaseRollingBack = "rolling-back"
	phaseChecking    = "health-checking"
	phaseBootPending = "boot-pending"
)

// maxStateFile bounds every small JSON file the agent reads back from its
// state directory: they are a few kilobytes.
const maxStateFile = 1 << 20

// Attempt is one try to apply a publication.
type Attempt struct {
	Version  string `json:"version,omitempty"`
	Expected string `json:"expected,omitempty"`
	// Count is the number of consecutive attempts of this publication.
	Count int `json:"count,omitempty"`
	// Running is set when the attempt starts and cleared when it ends: a
	// state loaded with Running set belongs to a tick that was killed.
	Running    bool            `json:"running,omitempty"`
	Result     manifest.Result `json:"result,omitempty"`
	StartedAt  time.Time       `json:"startedAt"`
	FinishedAt time.Time       `json:"finishedAt"`
	// NextRetry is when a failed attempt is retried under the retry policy
	// in force when it failed; decide recomputes it from FinishedAt, so a
	// changed policy applies at once.
	NextRetry time.Time `json:"nextRetry"`
}

// loadState reads the state. A damaged state file (not a regular file,
// too large, not JSON) is moved aside and the agent starts over from an
// empty state: the next publication is applied from scratch, and
// switching is skipped when it already runs. note says so, for the report.
func loadState(dir string, now time.Time) (s State, note string, err error) {
	_, note, err = statefile.Load(filepath.Join(dir, stateFile), maxStateFile, now, func(b []byte) error {
		s = State{}
		return json.Unmarshal(b, &s)
	})
	if err != nil {
		return State{}, "", fmt.Errorf("state: %w", err)
	}
	if note != "" {
		s = State{}
	}
	return s, note, nil
}

func saveState(dir string, s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, stateFile), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

// decision is what a tick does with a publication.
type decision int

const (
	// upToDate: the publication was applied (or found already applied);
	// report that the host is still there.
	upToDate decision = iota
	// apply: fetch, build and switch.
	apply
	// waitRetry: the last attempt of this publication failed and its
	// retry is not due yet.
	waitRetry
)

// final results need nothing more until the next publication.
func final(r manifest.Result) bool {
	return r == manifest.ResultSuccess || r == manifest.ResultUnchanged || r == manifest.ResultAutoUpdated
}

// decide compares the publication (version and expected system) with the
// last attempt. A publication is never missed: any difference in version
// (a content hash) or in the expected system means apply, however close
// together two publications are.
func decide(s State, version, expected string, now time.Time, retry backoff.Policy) (decision, time.Time) {
	a := s.Attempt
	if a.Version != version || a.Expected != expected {
		return apply, time.Time{}
	}
	if a.Running {
		// Killed mid-way. The first time, try again at once; a tick that
		// keeps dying (out of memory in the build?) backs off like a failure.
		if a.Count <= 1 {
			return apply, time.Time{}
		}
		due := a.StartedAt.Add(retry.Delay(a.Count - 1))
		if now.Before(due) {
			return waitRetry, due
		}
		return apply, time.Time{}
	}
	if final(a.Result) {
		return upToDate, time.Time{}
	}
	due := a.NextRetry
	if !a.FinishedAt.IsZero() {
		due = a.FinishedAt.Add(retry.Delay(a.Count))
	}
	if now.Before(due) {
		return waitRetry, due
	}
	return apply, time.Time{}
}

// begin records the start of an attempt.
func (s *State) begin(version, expected string, now time.Time) {
	if s.Attempt.Version == version && s.Attempt.Expected == expected {
		s.Attempt.Count++
	} else {
		s.Attempt = Attempt{Version: version, Expected: expected, Count: 1}
	}
	s.Attempt.Running = true
	s.Attempt.Result = ""
	s.Attempt.StartedAt = now
	s.Attempt.FinishedAt = time.Time{}
	s.Attempt.NextRetry = time.Time{}
}

// finish records the end of an attempt; a failed one gets its retry time.
func (s *State) finish(r manifest.Result, now time.Time, retry backoff.Policy) {
	s.Attempt.Running = false
	s.Attempt.Result = r
	s.Attempt.FinishedAt = now
	if !final(r) {
		s.Attempt.NextRetry = now.Add(retry.Delay(s.Attempt.Count))
	}
}
