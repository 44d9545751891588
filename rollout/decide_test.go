package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const (
	vNew = "1111111111111111"
	vOld = "0000000000000000"
)

func TestJudgeHost(t *testing.T) {
	unhealthy := &Health{OK: false}
	unhealthy.Checks = append(unhealthy.Checks, struct {
		Name string `json:"name"`
		OK   bool   `json:"ok"`
	}{"nginx", false})
	for _, c := range []struct {
		name    string
		version string
		rep     *Report
		err     error
		want    HostState
		detail  string
	}{
		{"not published", "", &Report{AppliedVersion: vNew}, nil, HostUnpublished, "publication failed"},
		{"no report", vNew, nil, nil, HostSilent, "no report yet"},
		{"unreadable", vNew, nil, errors.New("status.json is a FIFO"), HostSilent, "FIFO"},
		{"old version only", vNew, &Report{SeenVersion: vOld, AppliedVersion: vOld, Result: "unchanged"}, nil, HostSilent, "no report about the new version"},
		{"applied", vNew, &Report{SeenVersion: vNew, AppliedVersion: vNew, AttemptedVersion: vNew, Result: "success"}, nil, HostGood, "up-to-date"},
		{"applied, healthy", vNew, &Report{AppliedVersion: vNew, Result: "unchanged", Health: &Health{OK: true}}, nil, HostGood, "healthy"},
		{"applied, unhealthy later", vNew, &Report{AppliedVersion: vNew, Result: "unchanged", Health: unhealthy}, nil, HostBad, "unhealthy on the new version (nginx)"},
		{"rolled back by activation", vNew, &Report{SeenVersion: vNew, AppliedVersion: vOld, AttemptedVersion: vNew, Result: "rolled-back", RollbackReason: "activation-failed", Error: "switch failed"}, nil, HostBad, "rolled back (activation-failed): switch failed"},
		{"rolled back by health", vNew, &Report{AppliedVersion: vOld, AttemptedVersion: vNew, Result: "rolled-back", RollbackReason: "health-check", Health: unhealthy}, nil, HostBad, "health checks failed (nginx)"},
		{"build failed", vNew, &Report{AttemptedVersion: vNew, AppliedVersion: vOld, Result: "failure", Stage: "failed", Error: "build: boom"}, nil, HostBad, "failed: build: boom"},
		{"build failed, with a summary", vNew, &Report{AttemptedVersion: vNew, AppliedVersion: vOld, Result: "failure", Stage: "failed", Error: "build: nix build --no-link path:/t#x: error: boom", Summary: "build: error: boom"}, nil, HostBad, "failed: build: error: boom"},
		{"rolled back, with a summary", vNew, &Report{SeenVersion: vNew, AppliedVersion: vOld, AttemptedVersion: vNew, Result: "rolled-back", RollbackReason: "activation-failed", Error: "activation: activate /nix/store/x: error: unit a failed", Summary: "activation: error: unit a failed"}, nil, HostBad, "rolled back (activation-failed): activation: error: unit a failed"},
		{"old rollback, new seen", vNew, &Report{SeenVersion: vNew, AttemptedVersion: vOld, AppliedVersion: vOld, Result: "rolled-back", Stage: "fetched"}, nil, HostPending, "saw the new version"},
		{"error text is one line", vNew, &Report{AttemptedVersion: vNew, Result: "failure", Error: "a\x1b[2Jb\nc"}, nil, HostBad, "failed: a [2Jb c"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, detail := JudgeHost(c.version, c.rep, c.err)
			if got != c.want || !strings.Contains(detail, c.detail) {
				t.Errorf("got %s %q, want %s containing %q", got, detail, c.want, c.detail)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	pub := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	before, after := pub.Add(30*time.Minute), pub.Add(2*time.Hour)
	p := Policy{Quorum: 1, WaveDeadline: time.Hour}
	q75 := Policy{Quorum: 0.75, WaveDeadline: time.Hour}
	strict := Policy{Quorum: 1, WaveDeadline: time.Hour, Strict: true}
	vs := func(states ...HostState) []Verdict {
		out := make([]Verdict, len(states))
		for i, s := range states {
			out[i] = Verdict{Host: string(rune('a' + i)), State: s, Detail: "d"}
		}
		return out
	}
	G, B, P, S, U := HostGood, HostBad, HostPending, HostSilent, HostUnpublished
	for _, c := range []struct {
		name   string
		vs     []Verdict
		now    time.Time
		policy Policy
		want   Action
		reason string
	}{
		{"all good", vs(G, G, G), before, p, ActionAdvance, "3 of 3"},
		{"one bad halts at once", vs(G, B, S), before, p, ActionHalt, "b: d"},
		{"bad halts even past quorum", vs(G, G, G, B), after, q75, ActionHalt, "1 host(s) failed"},
		{"silent before the deadline waits", vs(G, G, S), before, p, ActionWait, "waiting for c"},
		{"silent after the deadline does not block", vs(G, G, S), after, p, ActionAdvance, "1 silent past the deadline do not block: c"},
		{"silent after the deadline blocks when strict", vs(G, G, S), after, strict, ActionWait, "blocked (--strict)"},
		{"strict passes once all are good", vs(G, G, G), after, strict, ActionAdvance, "3 of 3"},
		{"pending blocks after the deadline", vs(G, P, S), after, p, ActionWait, "waiting for b"},
		{"quorum met early", vs(G, G, G, S), before, q75, ActionAdvance, "3 of 4"},
		{"quorum not met early", vs(G, G, S, S), before, q75, ActionWait, "need 3"},
		{"quorum over reporters after deadline", vs(G, G, G, P, S, S), after, q75, ActionAdvance, "3 of 4 reporting"},
		{"nobody good after deadline waits", vs(S, S, P), after, p, ActionWait, "no host of the wave is up-to-date"},
		{"unpublished hosts are left out", vs(G, U), before, p, ActionAdvance, "1 of 1"},
		{"nothing published halts", vs(U, U), before, p, ActionHalt, "nothing was tried"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := Decide(c.vs, pub, c.now, c.policy)
			if d.Action != c.want || !strings.Contains(d.Reason, c.reason) {
				t.Errorf("got %s %q, want %s containing %q", d.Action, d.Reason, c.want, c.reason)
			}
		})
	}
}

func TestNeed(t *testing.T) {
	for _, c := range []struct {
		q    float64
		n    int
		want int
	}{{1, 4, 4}, {0.75, 4, 3}, {0.5, 3, 2}, {0.01, 100, 1}, {0.9, 10, 9}, {1, 1, 1}} {
		if got := need(c.q, c.n); got != c.want {
			t.Errorf("need(%g, %d) = %d, want %d", c.q, c.n, got, c.want)
		}
	}
}

func TestPolicyCheck(t *testing.T) {
	for _, p := range []Policy{{Quorum: 0, WaveDeadline: time.Hour}, {Quorum: 1.5, WaveDeadline: time.Hour}, {Quorum: 1}} {
		if p.Check() == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if err := DefaultPolicy.Check(); err != nil {
		t.Error(err)
	}
}
