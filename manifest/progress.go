package manifest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// ProgressFile is where an agent says, during a tick, which stage it is
// in: written atomically (temp + rename) at each stage, rate-limited, never
// on a tick that has nothing to do. It is the host's, like everything under
// reports/: ParseProgress bounds and validates it.
const ProgressFile = "reports/progress.json"

// MaxProgressSize is the largest progress.json a reader accepts; the
// agent's is about 300 bytes.
const MaxProgressSize = 4 << 10

// ProgressFormat is the version of progress.json.
const ProgressFormat = 1

// ProgressStage is what a tick is doing now.
type ProgressStage string

// Stages of a tick, in order.
const (
	ProgressFetching   ProgressStage = "fetching"
	ProgressBuilding   ProgressStage = "building"
	ProgressSwitching  ProgressStage = "switching"
	ProgressConfirming ProgressStage = "confirming"
	ProgressReporting  ProgressStage = "reporting"
)

// progressStages are the stages an agent writes, in order.
var progressStages = []ProgressStage{ProgressFetching, ProgressBuilding, ProgressSwitching, ProgressConfirming, ProgressReporting}

// Progress is reports/progress.json: the tick under way.
type Progress struct {
	Format int    `json:"format"`
	Host   string `json:"host"`
	// Version is the version the tick applies.
	Version string `json:"version"`
	// StartedAt is when the attempt started: the startedAt of the report
	// that will end it. A report with this startedAt (or a later one)
	// makes the progress old news.
	StartedAt time.Time     `json:"startedAt"`
	Stage     ProgressStage `json:"stage"`
	// StageStartedAt is when the stage began.
	StageStartedAt time.Time `json:"stageStartedAt"`
	// Log is the attempt's log under reports/logs/ as the agent appends
	// it (uncompressed; the report's gzipped log replaces it at the end).
	Log string `json:"log,omitempty"`
}

// ParseProgress decodes and validates a host's progress.json: every field
// is the host's, and ends up on a terminal.
func ParseProgress(data []byte, host string) (*Progress, error) {
	if len(data) > MaxProgressSize {
		return nil, fmt.Errorf("%s is %d bytes, over the %d byte limit", ProgressFile, len(data), MaxProgressSize)
	}
	var p Progress
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", ProgressFile, err)
	}
	var errs []string
	if p.Format != ProgressFormat {
		errs = append(errs, fmt.Sprintf("format %d is not %d", p.Format, ProgressFormat))
	}
	if p.Host != host {
		errs = append(errs, fmt.Sprintf("it is for host %q", p.Host))
	}
	if !validStage(p.Stage) {
		errs = append(errs, fmt.Sprintf("unknown stage %q", p.Stage))
	}
	if !plainName(p.Version, 128) {
		errs = append(errs, "version is not a plain name")
	}
	if p.Log != "" && (!plainName(p.Log, 255) || strings.HasPrefix(p.Log, ".")) {
		errs = append(errs, "log is not a plain file name")
	}
	if p.StartedAt.IsZero() || p.StageStartedAt.Before(p.StartedAt) {
		errs = append(errs, "its stage started before the attempt (or the attempt has no start)")
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", ProgressFile, errors.New(strings.Join(errs, "; ")))
	}
	return &p, nil
}

func validStage(s ProgressStage) bool {
	for _, x := range progressStages {
		if s == x {
			return true
		}
	}
	return false
}

// plainName is a non-empty printable name of at most max bytes with no
// path separator, space or control character.
func plainName(s string, max int) bool {
	if s == "" || len(s) > max || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || r == '/' || r == '\\' || (r >= 0x80 && r < 0xa0) || r > 0x7e {
			return false
		}
	}
	return true
}
