package rollout

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// HostState is a host's verdict on the version the rollout published to it.
type HostState string

const (
	// HostWaiting: its wave is not published yet.
	HostWaiting HostState = "waiting"
	// HostGood: up-to-date on the new version and healthy.
	HostGood HostState = "good"
	// HostBad: rolled back, failing or unhealthy on the new version.
	HostBad HostState = "bad"
	// HostPending: it saw the new version but has not applied it yet.
	HostPending HostState = "pending"
	// HostSilent: no report about the new version yet.
	HostSilent HostState = "silent"
	// HostUnpublished: its publication in this rollout failed.
	HostUnpublished HostState = "unpublished"
)

// Report is what a rollout reads of a host's reports/status.json: only
// versions, result and health. Times are the host's clock and never
// compared with the server's: a report naming the new version was made
// after its publication, whatever the clocks say.
type Report struct {
	Host             string `json:"host"`
	SeenVersion      string `json:"seenVersion"`
	AppliedVersion   string `json:"appliedVersion"`
	AttemptedVersion string `json:"attemptedVersion"`
	Stage            string `json:"stage"`
	Result           string `json:"result"`
	Error            string `json:"error,omitempty"`
	// Summary is Error without the command lines it quotes (agents that
	// send it); what a halt reason has room for.
	Summary        string  `json:"summary,omitempty"`
	RollbackReason string  `json:"rollbackReason,omitempty"`
	Health         *Health `json:"health,omitempty"`
}

// Health is the part of the agent's health result a rollout reads.
type Health struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Name string `json:"name"`
		OK   bool   `json:"ok"`
	} `json:"checks"`
}

// failedChecks names the checks that failed.
func (h *Health) failedChecks() string {
	var names []string
	for _, c := range h.Checks {
		if !c.OK {
			names = append(names, clip(c.Name, 40))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

// JudgeHost is a host's verdict on version v from its report (nil: none,
// or unreadable, then why is readErr).
func JudgeHost(v string, r *Report, readErr error) (HostState, string) {
	switch {
	case v == "":
		return HostUnpublished, "its publication failed"
	case r == nil && readErr != nil:
		return HostSilent, "report unreadable: " + clip(readErr.Error(), 120)
	case r == nil:
		return HostSilent, "no report yet"
	}
	return judgeReport(v, r)
}

// judgeReport is the verdict on v of a host's report: what it says of
// the version it attempted comes first, then the one it applied, then
// the one it saw.
func judgeReport(v string, r *Report) (HostState, string) {
	attempted, applied := r.AttemptedVersion == v, r.AppliedVersion == v
	switch {
	case attempted && r.rolledBack():
		return HostBad, r.rollbackDetail()
	case attempted && r.failed():
		return HostBad, "failed: " + clip(r.shortError(), 160)
	case applied && r.unhealthy():
		return HostBad, "unhealthy on the new version" + r.Health.failedChecks()
	case applied:
		return HostGood, "up-to-date and healthy"
	case attempted || r.SeenVersion == v:
		return HostPending, "saw the new version, not applied yet (" + clip(r.Stage, 20) + ")"
	}
	return HostSilent, "no report about the new version yet"
}

func (r *Report) rolledBack() bool { return r.Result == "rolled-back" || r.Stage == "rolled-back" }

func (r *Report) failed() bool { return r.Result == "failure" || r.Stage == "failed" }

// shortError is the summary where the agent sent one, else the error.
func (r *Report) shortError() string {
	if r.Summary != "" {
		return r.Summary
	}
	return r.Error
}

func (r *Report) unhealthy() bool { return r.Health != nil && !r.Health.OK }

// rollbackDetail says why a host rolled back: the reason it gives, then
// the failed health checks or its error.
func (r *Report) rollbackDetail() string {
	why := "rolled back"
	if r.RollbackReason != "" {
		why += " (" + clip(r.RollbackReason, 40) + ")"
	}
	if r.unhealthy() {
		why += ": health checks failed" + r.Health.failedChecks()
	} else if e := r.shortError(); e != "" {
		why += ": " + clip(e, 160)
	}
	return why
}

// Action is what a step does about the current wave.
type Action string

const (
	ActionWait    Action = "wait"
	ActionAdvance Action = "advance"
	ActionHalt    Action = "halt"
)

// Verdict is one host's judgement, input of Decide.
type Verdict struct {
	Host   string
	State  HostState
	Detail string
}

// Decision is a step's judgement of a wave.
type Decision struct {
	Action Action
	Reason string
}

// Decide judges a wave published at publishedAt from its hosts' verdicts:
//   - any host bad → halt;
//   - at least Quorum of all its published hosts good → advance (early:
//     no need to wait for the deadline);
//   - before the deadline → wait;
//   - after it, hosts that did not report are left out of the quorum
//     (unless Strict, when they keep blocking), so a sleeping laptop does
//     not hold the fleet; but a wave with no good host never passes.
//
// A wave none of whose publications succeeded halts: nothing was tried.
func Decide(vs []Verdict, publishedAt, now time.Time, p Policy) Decision {
	t := tallyVerdicts(vs)
	if len(t.bad) > 0 {
		sort.Strings(t.bad)
		return Decision{ActionHalt, fmt.Sprintf("%d host(s) failed on the new version: %s", len(t.bad), list(t.bad, 5))}
	}
	total := len(t.good) + len(t.pending) + len(t.silent)
	if total == 0 {
		return Decision{ActionHalt, "no host of the wave could be published: nothing was tried"}
	}
	if len(t.good) >= need(p.Quorum, total) {
		return Decision{ActionAdvance, fmt.Sprintf("%d of %d up-to-date and healthy", len(t.good), total)}
	}
	deadline := publishedAt.Add(p.WaveDeadline)
	waiting := append(append([]string(nil), t.pending...), t.silent...)
	sort.Strings(waiting)
	if now.Before(deadline) {
		return Decision{ActionWait, fmt.Sprintf("%d of %d up-to-date and healthy, need %d; waiting for %s until %s", len(t.good), total, need(p.Quorum, total), list(waiting, 5), deadline.UTC().Format(time.RFC3339))}
	}
	if p.Strict {
		return Decision{ActionWait, fmt.Sprintf("blocked (--strict): %d of %d up-to-date and healthy, need %d; past the deadline, still waiting for %s", len(t.good), total, need(p.Quorum, total), list(waiting, 5))}
	}
	return t.pastDeadline(p)
}

// tally is a wave's hosts by verdict (bad ones with their detail).
type tally struct {
	bad, good, pending, silent []string
}

func tallyVerdicts(vs []Verdict) tally {
	var t tally
	for _, v := range vs {
		switch v.State {
		case HostBad:
			t.bad = append(t.bad, v.Host+": "+v.Detail)
		case HostGood:
			t.good = append(t.good, v.Host)
		case HostPending:
			t.pending = append(t.pending, v.Host)
		case HostSilent:
			t.silent = append(t.silent, v.Host)
		}
	}
	return t
}

// pastDeadline judges a wave past its deadline, not Strict: its silent
// hosts are left out of the quorum.
func (t tally) pastDeadline(p Policy) Decision {
	reported := len(t.good) + len(t.pending)
	if len(t.good) == 0 {
		return Decision{ActionWait, fmt.Sprintf("no host of the wave is up-to-date and healthy yet (%d reported, %d silent past the deadline)", reported, len(t.silent))}
	}
	if len(t.good) >= need(p.Quorum, reported) {
		return Decision{ActionAdvance, fmt.Sprintf("%d of %d reporting hosts up-to-date and healthy; %d silent past the deadline do not block: %s", len(t.good), reported, len(t.silent), list(sortedCopy(t.silent), 5))}
	}
	sort.Strings(t.pending)
	return Decision{ActionWait, fmt.Sprintf("%d of %d reporting hosts up-to-date and healthy, need %d; waiting for %s", len(t.good), reported, need(p.Quorum, reported), list(t.pending, 5))}
}

// need is how many of n hosts a quorum q asks for (at least one).
func need(q float64, n int) int {
	k := int(math.Ceil(q*float64(n) - 1e-9))
	return max(1, min(k, n))
}

func list(xs []string, n int) string {
	if len(xs) > n {
		return strings.Join(xs[:n], ", ") + fmt.Sprintf(" and %d more", len(xs)-n)
	}
	return strings.Join(xs, ", ")
}

func sortedCopy(xs []string) []string {
	out := append([]string(nil), xs...)
	sort.Strings(out)
	return out
}

// clip bounds host-written text and keeps it on one printable line: it
// reaches a terminal through status.
func clip(s string, n int) string {
	b := make([]rune, 0, len(s))
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			r = ' '
		}
		b = append(b, r)
		if len(b) >= n {
			b = append(b, '…')
			break
		}
	}
	return string(b)
}
