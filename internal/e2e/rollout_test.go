package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/rollout"
)

// rolloutEnv drives rollouts of an Env with a clock the test moves (the
// waves' deadlines are the server's; the agents' ticks are explicit).
type rolloutEnv struct {
	*Env
	clock time.Time
}

func (r *rolloutEnv) now() time.Time { return r.clock }

func (r *rolloutEnv) start(t *testing.T, p rollout.Policy, selected ...string) *rollout.State {
	t.Helper()
	report, st, err := rollout.Start(context.Background(), rollout.Options{
		Deploy: deploy.Options{
			Root:     r.SSHD.Root,
			LockWait: time.Minute,
			Build:    &builder.Options{Jobs: 2, StateDir: r.stateDir},
			Nix:      r.Nix,
			Eval:     eval.Options{Ref: r.FleetDir},
			Select:   selected,
		},
		Policy:      p,
		Now:         r.now,
		SnapshotDir: filepath.Join(r.stateDir, "rollout"),
	})
	if err != nil {
		t.Fatalf("rollout start: %v", err)
	}
	if err := report.Failure(); err != nil {
		t.Fatalf("rollout start: %v", err)
	}
	return st
}

func (r *rolloutEnv) step(t *testing.T) *rollout.StepResult {
	t.Helper()
	res, err := rollout.Step(context.Background(), rollout.StepOptions{Deploy: deploy.Options{Root: r.SSHD.Root, LockWait: time.Minute, Nix: r.Nix}, Now: r.now})
	if err != nil {
		t.Fatalf("rollout step: %v", err)
	}
	return res
}

// tick runs one agent tick on each host.
func (r *rolloutEnv) tick(t *testing.T, hosts ...string) {
	t.Helper()
	for _, n := range hosts {
		r.Host(t, n).Run(t)
	}
}

// versions are the versions the hosts' chroots serve.
func (r *rolloutEnv) versions(t *testing.T, hosts []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range hosts {
		out[n] = r.Manifest(t, n).Version
	}
	return out
}

// expect fails unless every host serves v.
func (r *rolloutEnv) expect(t *testing.T, what string, hosts []string, v string) {
	t.Helper()
	for h, got := range r.versions(t, hosts) {
		if got != v {
			t.Errorf("%s: %s serves %s, want %s", what, h, got, v)
		}
	}
}

// everServed lists the versions publish's retention record says a host's
// chroot served (its live manifest and every one replaced since).
func (r *rolloutEnv) everServed(t *testing.T, host string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(r.SSHD.Root, publish.StateDir, host, "history.json"))
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Entries []struct {
			Version string `json:"version"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range h.Entries {
		out = append(out, e.Version)
	}
	return out
}

func names(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s-%03d", prefix, i))
	}
	return out
}

// TestRolloutInWaves: 12 hosts in 3 waves (canaries by the module's
// rollout.wave = 0, the middle wave by its default, the last by
// rollout.wave = 2), real sshd, real Nix, real agents ticking once per
// wave.
func TestRolloutInWaves(t *testing.T) {
	canaries, middle, last := names("c", 3), names("m", 5), names("z", 4)
	all := slices.Concat(canaries, middle, last)
	wave0, wave2 := 0, 2
	var f fixture.Fleet
	for _, n := range canaries {
		f.Hosts = append(f.Hosts, fixture.Host{Name: n, Bento: &fixture.Bento{Enable: true, Wave: &wave0}})
	}
	for _, n := range middle {
		f.Hosts = append(f.Hosts, fixture.Host{Name: n, Bento: &fixture.Bento{Enable: true}})
	}
	for _, n := range last {
		f.Hosts = append(f.Hosts, fixture.Host{Name: n, Bento: &fixture.Bento{Enable: true, Wave: &wave2}})
	}
	r := &rolloutEnv{Env: Start(t, f), clock: time.Now().UTC().Truncate(time.Second)}
	// c-001's health check fails on a system marked bad (the marks are
	// written below): a real check run by the real agent.
	marks := t.TempDir()
	c1 := r.Host(t, "c-001")
	c1.Settings["healthChecks"] = map[string]any{"web": map[string]any{
		"command": []string{"/bin/sh", "-c", `b=$(basename "$(readlink -f "$1")"); if [ -e "$2/bad-$b" ]; then echo "web is down on $b" >&2; exit 1; fi`, "check", c1.CurrentSystem, marks},
		"timeout": "5s", "retries": 0, "interval": "0", "settle": "0"}}
	r.Publish(t)
	r.tick(t, all...)
	v1 := r.Manifest(t, "c-000").Version
	generation := func(g string, fail string) {
		for i := range r.Fleet.Hosts {
			r.Fleet.Hosts[i].Generation = g
			r.Fleet.Hosts[i].FailSwitch = r.Fleet.Hosts[i].Name == fail
		}
		r.WriteFleet(t, r.Fleet)
	}

	// A good version reaches every wave in order; a host that never
	// reports (m-004, asleep) does not block its wave past the deadline.
	generation("2", "")
	policy := rollout.Policy{Quorum: 1, WaveDeadline: 30 * time.Minute}
	st := r.start(t, policy)
	if len(st.Waves) != 3 || len(st.Waves[0].Hosts) != 3 || len(st.Waves[1].Hosts) != 5 || len(st.Waves[2].Hosts) != 4 {
		t.Fatalf("waves %+v", st.Waves)
	}
	v2 := r.Manifest(t, "c-000").Version
	if v2 == v1 {
		t.Fatal("the new version is the old one")
	}
	// Its systems (new and previous) are GC roots while it lasts.
	roots, _ := filepath.Glob(filepath.Join(r.stateDir, "rollout", st.ID, "roots", "*"))
	rooted := map[string]bool{}
	for _, l := range roots {
		if p, err := os.Readlink(l); err == nil {
			rooted[p] = true
		}
	}
	for _, h := range st.Hosts {
		if !rooted[h.Toplevel] || h.Previous == nil || !rooted[h.Previous.Toplevel] {
			t.Errorf("%s: system %s or previous %+v is not a GC root of the rollout (%v)", h.Name, h.Toplevel, h.Previous, roots)
		}
	}
	r.expect(t, "after start", canaries, v2)
	r.expect(t, "after start", slices.Concat(middle, last), v1)
	// Edits after the start do not reach the later waves.
	generation("2-edited-later", "")

	if res := r.step(t); res.Decision.Action != rollout.ActionWait {
		t.Fatalf("step before the canaries reported: %+v", res.Decision)
	}
	r.expect(t, "canaries silent", middle, v1)
	r.tick(t, canaries...)
	if res := r.step(t); res.Decision.Action != rollout.ActionAdvance {
		t.Fatalf("canaries up to date: %+v", res.Decision)
	}
	r.expect(t, "wave 0 healthy", middle, v2)
	r.expect(t, "wave 0 healthy", last, v1)

	r.tick(t, middle[:4]...)
	if res := r.step(t); res.Decision.Action != rollout.ActionWait || !strings.Contains(res.Decision.Reason, "m-004") {
		t.Fatalf("m-004 silent before the deadline: %+v", res.Decision)
	}
	r.expect(t, "m-004 silent, before the deadline", last, v1)
	r.clock = r.clock.Add(31 * time.Minute)
	if res := r.step(t); res.Decision.Action != rollout.ActionAdvance {
		t.Fatalf("m-004 silent past the deadline: %+v", res.Decision)
	}
	r.expect(t, "wave 1 healthy", last, v2)
	r.tick(t, last...)
	if res := r.step(t); res.State.Phase != rollout.PhaseDone {
		t.Fatalf("last wave healthy: %s %+v", res.State.Phase, res.Decision)
	}
	r.tick(t, "m-004")
	r.clock = r.clock.Add(time.Hour)

	// A version whose health check fails on one canary: it rolls back,
	// the rollout halts, no host outside wave 0 ever receives it; abort
	// restores wave 0.
	generation("3", "")
	r.start(t, policy)
	v3 := r.Manifest(t, "c-000").Version
	if err := os.WriteFile(filepath.Join(marks, "bad-"+filepath.Base(r.Manifest(t, "c-001").ExpectedToplevel)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r.tick(t, canaries...)
	if st := r.Host(t, "c-001").Status(t); st.Result != manifest.ResultRolledBack || st.RollbackReason != manifest.RollbackHealthCheck || st.AttemptedVersion != v3 {
		t.Fatalf("c-001 report: %+v", st)
	}
	res := r.step(t)
	if res.State.Phase != rollout.PhaseHalted || !strings.Contains(res.State.Reason, "c-001: rolled back (health-check): health checks failed (web)") {
		t.Fatalf("after the bad canary: %s %q", res.State.Phase, res.State.Reason)
	}
	if out, _ := serverBento(t, r.Env, nil, "rollout", "status", "--chroot-root", r.SSHD.Root); !strings.Contains(out.Stdout, "halted") || !strings.Contains(out.Stdout, "c-001") {
		t.Errorf("bento rollout status:\n%s", out.Output())
	}
	r.clock = r.clock.Add(2 * time.Hour)
	if res := r.step(t); res.State.Phase != rollout.PhaseHalted || res.Published != nil {
		t.Fatalf("a halted rollout stepped on: %s", res.State.Phase)
	}
	loaded, err := rollout.Load(r.SSHD.Root)
	if err != nil || loaded.Phase != rollout.PhaseHalted {
		t.Fatalf("rollout.Load: %v %+v", err, loaded)
	}
	for _, n := range slices.Concat(middle, last) {
		if slices.Contains(r.everServed(t, n), v3) {
			t.Errorf("%s was served the bad version %s", n, v3)
		}
	}
	r.expect(t, "halted", slices.Concat(middle, last), v2)

	before := r.Manifest(t, "c-000").PublishedAt
	ab, err := rollout.Abort(context.Background(), rollout.StepOptions{Deploy: deploy.Options{Root: r.SSHD.Root, LockWait: time.Minute, Nix: r.Nix}, Now: r.now})
	if err != nil {
		t.Fatal(err)
	}
	if ab.State.Phase != rollout.PhaseAborted || ab.Published == nil || ab.Published.Failure() != nil {
		t.Fatalf("abort: %s %+v", ab.State.Phase, ab.Published)
	}
	r.expect(t, "after abort", all, v2)
	if m := r.Manifest(t, "c-000"); !m.PublishedAt.After(before) {
		t.Errorf("abort did not republish c-000 (published at %s, before %s)", m.PublishedAt, before)
	}
	r.tick(t, canaries...)
	for _, n := range canaries {
		if st := r.Host(t, n).Status(t); st.AppliedVersion != v2 {
			t.Errorf("%s after abort: applied %s, want %s", n, st.AppliedVersion, v2)
		}
	}
	r.clock = r.clock.Add(time.Hour)

	// --strict: a host that never reports blocks its wave past the deadline.
	generation("4", "")
	st = r.start(t, rollout.Policy{Quorum: 1, WaveDeadline: 30 * time.Minute, Strict: true}, "c-000", "m-000", "m-001", "z-000")
	if len(st.Waves) != 3 {
		t.Fatalf("strict rollout waves %+v", st.Waves)
	}
	v4 := r.Manifest(t, "c-000").Version
	r.tick(t, "c-000")
	r.step(t)
	r.tick(t, "m-000") // m-001 sleeps
	r.clock = r.clock.Add(31 * time.Minute)
	res = r.step(t)
	if res.Decision.Action != rollout.ActionWait || !strings.Contains(res.Decision.Reason, "m-001") {
		t.Fatalf("strict, m-001 silent past the deadline: %+v", res.Decision)
	}
	r.expect(t, "strict, blocked", []string{"z-000"}, v2)
	r.tick(t, "m-001")
	if res := r.step(t); res.Decision.Action != rollout.ActionAdvance {
		t.Fatalf("strict, all reported: %+v", res.Decision)
	}
	r.expect(t, "strict, passed", []string{"z-000"}, v4)
	r.expect(t, "not selected", []string{"c-001", "z-001"}, v2)
}
