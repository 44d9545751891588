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
	if errs := p.problems(host); len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", ProgressFile, errors.New(strings.Join(errs, "; ")))
	}
	return &p, nil
}

// problems lists what is wrong with a progress.json of host.
func (p *Progress) problems(host string) []string {
	checks := []struct {
		bad bool
		why string
	}{
		{p.Format != ProgressFormat, fmt.Sprintf("format %d is not %d", p.Format, ProgressFormat)},
		{p.Host != host, fmt.Sprintf("it is for host %q", p.Host)},
		{!validStage(p.Stage), fmt.Sprintf("unknown stage %q", p.Stage)},
		{!plainName(p.Version, 128), "version is not a plain name"},
		{p.Log != "" && (!plainName(p.Log, 255) || strings.HasPrefix(p.Log, ".")), "log is not a plain file name"},
		{p.StartedAt.IsZero() || p.StageStartedAt.Before(p.StartedAt), "its stage started before the attempt (or the attempt has no start)"},
	}
	var errs []string
	for _, c := range checks {
		if c.bad {
			errs = append(errs, c.why)
		}
	}
	return errs
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
		if !plainRune(r) {
			return false
		}
	}
	return true
}

// plainRune is printable ASCII other than a space or a path separator:
// everything above 0x7e (DEL, the C1 controls, the rest of Unicode) is
// out.
func plainRune(r rune) bool {
	return r > ' ' && r <= 0x7e && r != '/' && r != '\\'
}
