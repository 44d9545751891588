package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/agent/backoff"
	"github.com/bento-nix/bento/manifest"
)

func TestDecide(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	retry := backoff.Policy{Initial: 10 * time.Minute, Max: time.Hour}
	done := func(v, exp string, r manifest.Result, count int, next time.Time) State {
		return State{AppliedVersion: "v0", Attempt: Attempt{Version: v, Expected: exp, Count: count, Result: r, StartedAt: t0, FinishedAt: t0, NextRetry: next}}
	}
	cases := []struct {
		name      string
		st        State
		version   string
		expected  string
		now       time.Time
		want      decision
		wantDueAt time.Time
	}{
		{"first tick ever", State{}, "v1", "/nix/store/a", t0, apply, time.Time{}},
		{"applied, same publication", done("v1", "/nix/store/a", manifest.ResultSuccess, 1, time.Time{}), "v1", "/nix/store/a", t0, upToDate, time.Time{}},
		{"auto-updated counts as final", done("v1", "", manifest.ResultAutoUpdated, 1, time.Time{}), "v1", "", t0, upToDate, time.Time{}},
		{"new version", done("v1", "/nix/store/a", manifest.ResultSuccess, 1, time.Time{}), "v2", "/nix/store/a", t0, apply, time.Time{}},
		{"same version, new expected system", done("v1", "", manifest.ResultSuccess, 1, time.Time{}), "v1", "/nix/store/b", t0, apply, time.Time{}},
		{"failed, retry not due", done("v1", "", manifest.ResultFailure, 1, t0.Add(10*time.Minute)), "v1", "", t0.Add(time.Minute), waitRetry, t0.Add(10 * time.Minute)},
		{"failed, retry due", done("v1", "", manifest.ResultFailure, 1, t0.Add(10*time.Minute)), "v1", "", t0.Add(10 * time.Minute), apply, time.Time{}},
		{"rolled back, retry not due", done("v1", "", manifest.ResultRolledBack, 2, t0.Add(20*time.Minute)), "v1", "", t0.Add(5 * time.Minute), waitRetry, t0.Add(20 * time.Minute)},
		{"failed, but a new version is published", done("v1", "", manifest.ResultFailure, 3, t0.Add(time.Hour)), "v2", "", t0, apply, time.Time{}},
		{"killed mid-attempt: retried at once", State{Attempt: Attempt{Version: "v1", Count: 1, Running: true, StartedAt: t0}}, "v1", "", t0.Add(time.Second), apply, time.Time{}},
		{"killed again and again: backs off", State{Attempt: Attempt{Version: "v1", Count: 3, Running: true, StartedAt: t0}}, "v1", "", t0.Add(time.Minute), waitRetry, t0.Add(20 * time.Minute)},
		{"retry policy shortened since the failure", done("v1", "", manifest.ResultFailure, 1, t0.Add(6*time.Hour)), "v1", "", t0.Add(10 * time.Minute), apply, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, due := decide(tc.st, tc.version, tc.expected, tc.now, retry)
			if got != tc.want || !due.Equal(tc.wantDueAt) {
				t.Errorf("decide = %v (due %v), want %v (due %v)", got, due, tc.want, tc.wantDueAt)
			}
		})
	}
}

func TestBeginFinishCountsAndBacksOff(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	retry := backoff.Policy{Initial: 10 * time.Minute, Max: 30 * time.Minute}
	var s State
	var nexts []time.Duration
	for i := 0; i < 4; i++ {
		now := t0.Add(time.Duration(i) * time.Hour)
		s.begin("v1", "", now)
		if !s.Attempt.Running || s.Attempt.Count != i+1 {
			t.Fatalf("attempt %d: %+v", i+1, s.Attempt)
		}
		s.finish(manifest.ResultFailure, now, retry)
		nexts = append(nexts, s.Attempt.NextRetry.Sub(now))
	}
	want := []time.Duration{10 * time.Minute, 20 * time.Minute, 30 * time.Minute, 30 * time.Minute}
	for i := range want {
		if nexts[i] != want[i] {
			t.Errorf("retry delays %v, want %v", nexts, want)
			break
		}
	}
	s.begin("v2", "", t0)
	if s.Attempt.Count != 1 {
		t.Errorf("a new version starts counting at 1, got %d", s.Attempt.Count)
	}
	s.finish(manifest.ResultSuccess, t0, retry)
	if !s.Attempt.NextRetry.IsZero() || s.Attempt.Running {
		t.Errorf("a success has no retry: %+v", s.Attempt)
	}
}

func TestStateSurvivesReload(t *testing.T) {
	dir := t.TempDir()
	s := State{AppliedVersion: "v1", AppliedSystem: "/nix/store/a", Attempt: Attempt{Version: "v2", Count: 2, Running: true}}
	if err := saveState(dir, s); err != nil {
		t.Fatal(err)
	}
	got, note, err := loadState(dir, time.Now())
	if err != nil || note != "" || got.AppliedVersion != "v1" || !got.Attempt.Running || got.Attempt.Count != 2 {
		t.Errorf("reloaded %+v, %q, %v", got, note, err)
	}
}

// A damaged state file is moved aside once and the agent starts from an
// empty state; a symlink to /dev/zero is never read.
func TestDamagedStateIsMovedAside(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(p string) error
	}{
		{"garbage", func(p string) error { return os.WriteFile(p, []byte("{not json"), 0o644) }},
		{"symlink to /dev/zero", func(p string) error { return os.Symlink("/dev/zero", p) }},
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o644) }},
		{"too large", func(p string) error { return os.WriteFile(p, make([]byte, maxStateFile+1), 0o644) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o755) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, stateFile)
			if err := tc.make(p); err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			got, note, err := loadState(dir, now)
			if err != nil || got.AppliedVersion != "" || got.Attempt.Version != "" {
				t.Fatalf("loadState: %+v, %v", got, err)
			}
			aside := p + ".corrupt-20260102T030405Z"
			if !strings.Contains(note, aside) {
				t.Errorf("note %q does not name %s", note, aside)
			}
			if _, err := os.Lstat(aside); err != nil {
				t.Errorf("not moved aside: %v", err)
			}
			if _, err := os.Lstat(p); !os.IsNotExist(err) {
				t.Errorf("%s still there: %v", p, err)
			}
			// Once: the next load finds nothing to say.
			if _, note, err := loadState(dir, now); err != nil || note != "" {
				t.Errorf("second load: %q, %v", note, err)
			}
		})
	}
}

func TestLogBufferKeepsHeadAndTail(t *testing.T) {
	var live bytes.Buffer
	l := newLogBuffer(4096, &live)
	l.Printf("starting")
	for i := 0; i < 2000; i++ {
		l.Write([]byte("building line that goes on and on\n"))
	}
	l.Printf("error: the end that explains the failure")
	got := string(l.Bytes())
	if len(got) > 4096+200 {
		t.Errorf("kept %d bytes, want about 4096", len(got))
	}
	for _, want := range []string{"bento: starting", "bytes of log cut here", "the end that explains the failure"} {
		if !strings.Contains(got, want) {
			t.Errorf("kept log lacks %q", want)
		}
	}
	if !strings.Contains(live.String(), "the end") || live.Len() < 2000*30 {
		t.Error("the live copy is not the full output")
	}
}
