package rollout_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/rollout"
)

// world is a chroot root and a fleet directory published without Nix
// (no build): what a rollout does to the chroots is the same.
type world struct {
	t     *testing.T
	root  string
	fleet string
	hosts []fleet.Host
	clock time.Time
	snap  string
}

func newWorld(t *testing.T, waves map[string]int) *world {
	w := &world{t: t, root: t.TempDir(), fleet: t.TempDir(), clock: time.Now().UTC().Truncate(time.Second), snap: t.TempDir()}
	for _, name := range sortedKeys(waves) {
		w.hosts = append(w.hosts, fleet.Host{Name: name, Managed: true, Enable: true, Layout: fleet.LayoutFlake,
			Ref: "path:" + w.fleet, Attr: fleet.ConfigAttr(name),
			Options: fleet.Options{User: name, Mode: manifest.ModeBuild, Operation: "switch", Tags: []string{}, Wave: waves[name]}})
	}
	w.write("v1")
	return w
}

func sortedKeys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func (w *world) write(content string) {
	w.t.Helper()
	if err := os.WriteFile(filepath.Join(w.fleet, "flake.nix"), []byte("{ outputs = _: { }; } # "+content+"\n"), 0o644); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(w.fleet, "common.nix"), []byte(content), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) now() time.Time { return w.clock }

func (w *world) deployOptions() deploy.Options {
	return deploy.Options{
		Root: w.root,
		Discover: func(context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
			return &fleet.Fleet{Ref: "path:" + w.fleet, Dir: w.fleet, Layout: fleet.LayoutFlake, Hosts: w.hosts}, w.hosts, false, nil
		},
	}
}

func (w *world) version(host string) string {
	w.t.Helper()
	data, err := os.ReadFile(filepath.Join(w.root, host, manifest.ManifestFile))
	if err != nil {
		w.t.Fatal(err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		w.t.Fatal(err)
	}
	return m.Version
}

func (w *world) report(host string, r map[string]any) {
	w.t.Helper()
	r["format"], r["host"], r["finishedAt"] = 1, host, w.clock.Format(time.RFC3339)
	data, _ := json.Marshal(r)
	dir := filepath.Join(w.root, host, "reports")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status.json"), data, 0o644); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) good(host string) {
	v := w.version(host)
	w.report(host, map[string]any{"seenVersion": v, "appliedVersion": v, "attemptedVersion": v, "stage": "confirmed", "result": "success"})
}

func (w *world) step() *rollout.StepResult {
	w.t.Helper()
	res, err := rollout.Step(context.Background(), rollout.StepOptions{Deploy: deploy.Options{Root: w.root}, Now: w.now})
	if err != nil {
		w.t.Fatal(err)
	}
	return res
}

func (w *world) versions(hosts ...string) map[string]string {
	out := map[string]string{}
	for _, h := range hosts {
		out[h] = w.version(h)
	}
	return out
}

func TestRolloutWavesHaltAbort(t *testing.T) {
	w := newWorld(t, map[string]int{"c1": 0, "c2": 0, "m1": 1, "m2": 1, "m3": 1, "z1": 2, "z2": 2})
	ctx := context.Background()
	if r, err := deploy.Run(ctx, w.deployOptions()); err != nil || !r.OK {
		t.Fatalf("first deploy: %v %+v", err, r)
	}
	v1 := w.version("c1")

	w.write("v2")
	report, st, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap})
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Hosts) != 2 || len(st.Waves) != 3 {
		t.Fatalf("start published %d hosts in %d waves, want 2 in 3", len(report.Hosts), len(st.Waves))
	}
	v2 := w.version("c1")
	if v2 == v1 || w.version("c2") != v2 {
		t.Fatalf("canaries at %v, want %s", w.versions("c1", "c2"), v2)
	}
	for h, v := range w.versions("m1", "m2", "m3", "z1", "z2") {
		if v != v1 {
			t.Errorf("%s got %s before its wave", h, v)
		}
	}

	// The working tree moves on; the rollout keeps publishing what it started with.
	w.write("v3")

	if res := w.step(); res.Decision.Action != rollout.ActionWait || w.version("m1") != v1 {
		t.Fatalf("step without reports: %+v, m1 at %s", res.Decision, w.version("m1"))
	}
	w.good("c1")
	if res := w.step(); res.Decision.Action != rollout.ActionWait {
		t.Fatalf("one canary of two reported: %+v", res.Decision)
	}
	w.good("c2")
	res := w.step()
	if res.Published != nil {
		for _, r := range res.Published.Hosts {
			t.Logf("%s %s %v", r.Host, r.Status, r.Err)
		}
	}
	if res.Decision.Action != rollout.ActionAdvance || res.Published == nil {
		t.Fatalf("both canaries good: %+v", res.Decision)
	}
	for h, v := range w.versions("m1", "m2", "m3") {
		if v != v2 {
			t.Errorf("wave 1 host %s at %s, want the rollout's %s (not the working tree's)", h, v, v2)
		}
	}
	if w.version("z1") != v1 {
		t.Errorf("wave 2 published early")
	}
	// Idempotent: the same reports publish nothing more.
	if res := w.step(); res.Published != nil || res.Decision.Action != rollout.ActionWait {
		t.Fatalf("second step: %+v", res.Decision)
	}

	w.good("m1")
	w.good("m2")
	w.report("m3", map[string]any{"seenVersion": v2, "appliedVersion": v1, "attemptedVersion": v2, "stage": "rolled-back", "result": "rolled-back", "rollbackReason": "health-check", "error": "check nginx failed"})
	res = w.step()
	if res.Decision.Action != rollout.ActionHalt || res.State.Phase != rollout.PhaseHalted {
		t.Fatalf("bad host: %+v %s", res.Decision, res.State.Phase)
	}
	for h, v := range w.versions("z1", "z2") {
		if v != v1 {
			t.Errorf("halted rollout reached %s (%s)", h, v)
		}
	}
	w.good("m3")
	if res := w.step(); res.State.Phase != rollout.PhaseHalted || res.Published != nil {
		t.Fatalf("a halted rollout stepped on: %s", res.State.Phase)
	}
	loaded, err := rollout.Load(w.root)
	if err != nil || loaded.Phase != rollout.PhaseHalted || loaded.Reason == "" {
		t.Fatalf("Load: %v %+v", err, loaded)
	}

	// A plain deploy is refused while the rollout holds the fleet.
	d := w.deployOptions()
	d.Hooks.Locked = rollout.Guard(false, w.now)
	if _, err := deploy.Run(ctx, d); !errors.Is(err, rollout.ErrActive) {
		t.Fatalf("deploy during a rollout: %v", err)
	}
	if w.version("z1") != v1 {
		t.Fatal("the refused deploy published")
	}

	ab, err := rollout.Abort(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: w.root}, Now: w.now})
	if err != nil {
		t.Fatal(err)
	}
	if ab.State.Phase != rollout.PhaseAborted || ab.Published == nil || len(ab.Published.Hosts) != 5 {
		t.Fatalf("abort: %s %+v", ab.State.Phase, ab.Published)
	}
	for h, v := range w.versions("c1", "c2", "m1", "m2", "m3", "z1", "z2") {
		if v != v1 {
			t.Errorf("after abort %s is at %s, want %s", h, v, v1)
		}
	}
	// bento history has the rollout's steps, in order.
	db, err := history.OpenReadOnly(ctx, history.Path(w.root))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	events, err := db.Timeline(ctx, history.Query{})
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, e := range events {
		if e.Kind == "rollout" && (e.Host == "" || e.Host == "c1" || e.Host == "m1") {
			steps = append(steps, fmt.Sprintf("%s %d %s", e.Action, *e.Wave, e.Host))
		}
	}
	if want := "start 0 c1|advance 1 m1|halt 1 |abort 1 c1|abort 1 m1"; strings.Join(steps, "|") != want {
		t.Errorf("history of the rollout: %q, want %q", strings.Join(steps, "|"), want)
	}

	// Over a finished rollout, deploys go on.
	if _, err := deploy.Run(ctx, d); err != nil {
		t.Fatalf("deploy after abort: %v", err)
	}
}

func TestRolloutDeadlineAndStrict(t *testing.T) {
	for _, strict := range []bool{false, true} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			w := newWorld(t, map[string]int{"a": 0, "b": 0, "c": 1})
			ctx := context.Background()
			if _, err := deploy.Run(ctx, w.deployOptions()); err != nil {
				t.Fatal(err)
			}
			v1 := w.version("c")
			w.write("v2")
			p := rollout.Policy{Quorum: 1, WaveDeadline: 10 * time.Minute, Strict: strict}
			if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: p, Now: w.now, SnapshotDir: w.snap}); err != nil {
				t.Fatal(err)
			}
			w.good("a") // b sleeps
			if res := w.step(); res.Decision.Action != rollout.ActionWait {
				t.Fatalf("before the deadline: %+v", res.Decision)
			}
			w.clock = w.clock.Add(11 * time.Minute)
			res := w.step()
			if strict {
				if res.Decision.Action != rollout.ActionWait || w.version("c") != v1 {
					t.Fatalf("strict: %+v, c at %s", res.Decision, w.version("c"))
				}
				return
			}
			if res.Decision.Action != rollout.ActionAdvance || w.version("c") == v1 {
				t.Fatalf("default policy: %+v, c at %s", res.Decision, w.version("c"))
			}
		})
	}
}

func TestRolloutRefusesSecondStart(t *testing.T) {
	w := newWorld(t, map[string]int{"a": 0, "b": 1})
	ctx := context.Background()
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap}); err != nil {
		t.Fatal(err)
	}
	w.write("v2")
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap}); !errors.Is(err, rollout.ErrActive) {
		t.Fatalf("second start: %v", err)
	}
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: rollout.DefaultPolicy, Now: w.now, Supersede: true, SnapshotDir: filepath.Join(w.root, "state")}); err == nil || !strings.Contains(err.Error(), "inside the chroot root") {
		t.Fatalf("snapshots inside the chroot root: %v", err)
	}
	w.clock = w.clock.Add(time.Second)
	_, st, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap, Supersede: true})
	if err != nil || st.Phase != rollout.PhaseRunning {
		t.Fatalf("superseding start: %v", err)
	}
	entries, _ := os.ReadDir(w.snap)
	if len(entries) != 1 || entries[0].Name() != st.ID {
		t.Errorf("snapshot directory holds %v, want only the current rollout's %s", entries, st.ID)
	}
}

// A rollout started with a publication key signs every wave with it; a
// step without it is refused rather than publish manifests the hosts
// would refuse.
func TestRolloutSignsEveryWave(t *testing.T) {
	w := newWorld(t, map[string]int{"a": 0, "b": 1})
	ctx := context.Background()
	key, err := manifest.GenerateSigningKey("fleet-1")
	if err != nil {
		t.Fatal(err)
	}
	d := w.deployOptions()
	d.PublicationKey = &key
	if _, err := deploy.Run(ctx, d); err != nil {
		t.Fatal(err)
	}
	v1 := w.version("a")
	w.write("v2")
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: d, Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap}); err != nil {
		t.Fatal(err)
	}
	w.good("a")
	var ce *deploy.ConfigError
	if _, err := rollout.Step(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: w.root}, Now: w.now}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "fleet-1") {
		t.Fatalf("step without the key: %v", err)
	}
	other, _ := manifest.GenerateSigningKey("fleet-2")
	if _, err := rollout.Step(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: w.root, PublicationKey: &other}, Now: w.now}); !errors.As(err, &ce) {
		t.Fatalf("step with another key: %v", err)
	}
	res, err := rollout.Step(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: w.root, PublicationKey: &key}, Now: w.now})
	if err != nil || res.Published == nil {
		t.Fatalf("step with the key: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(w.root, "b", manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, sig, err := manifest.Split(data); err != nil || sig == nil || sig.Key != key.Public().String() {
		t.Errorf("wave 1's manifest is not signed by the rollout's key: %v %+v", err, sig)
	}
	// Abort restores the signed previous version, signed afresh.
	if _, err := rollout.Abort(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: w.root, PublicationKey: &key}, Now: w.now}); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(filepath.Join(w.root, "a", manifest.ManifestFile))
	if _, sig, err := manifest.Split(data); w.version("a") != v1 || err != nil || sig == nil {
		t.Errorf("after abort a is at %s (want %s), signature %+v %v", w.version("a"), v1, sig, err)
	}
}

// A host whose build failed at start keeps its previous publication when
// its wave comes, as in a deploy: it is not published without a system.
func TestRolloutKeepsFailedBuilds(t *testing.T) {
	w := newWorld(t, map[string]int{"a": 0, "b": 1, "c": 1})
	ctx := context.Background()
	if _, err := deploy.Run(ctx, w.deployOptions()); err != nil {
		t.Fatal(err)
	}
	v1 := w.version("b")
	w.write("v2")
	d := w.deployOptions()
	d.Prebuilt = []builder.Result{{Host: "b", Status: builder.StatusFailed, Err: errors.New("build: boom")}}
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: d, Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap}); err != nil {
		t.Fatal(err)
	}
	w.good("a")
	res := w.step()
	if res.Published == nil || w.version("b") != v1 || w.version("c") == v1 {
		t.Fatalf("wave 1: b at %s (want %s, kept), c at %s (want the new version)", w.version("b"), v1, w.version("c"))
	}
	if h := res.State.View(true).Hosts[1]; h.Host != "b" || h.State != rollout.HostUnpublished || !strings.Contains(h.Detail, "boom") {
		t.Errorf("b in the rollout: %+v", h)
	}
}

// Two steps at once are serialised by the chroot root's lock: the wave is
// published once, and the second step judges the next wave.
func TestConcurrentStepsPublishOnce(t *testing.T) {
	w := newWorld(t, map[string]int{"a": 0, "b": 1, "c": 2})
	ctx := context.Background()
	if _, _, err := rollout.Start(ctx, rollout.Options{Deploy: w.deployOptions(), Policy: rollout.DefaultPolicy, Now: w.now, SnapshotDir: w.snap}); err != nil {
		t.Fatal(err)
	}
	w.good("a")
	results := make(chan *rollout.StepResult, 2)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			res, err := rollout.Step(ctx, rollout.StepOptions{Deploy: deploy.Options{Root: w.root, LockWait: time.Minute}, Now: w.now})
			results <- res
			errs <- err
		}()
	}
	published := 0
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if res := <-results; res.Published != nil {
			published++
		}
	}
	st, err := rollout.Load(w.root)
	if err != nil {
		t.Fatal(err)
	}
	if published != 1 || st.Current != 1 || st.Waves[2].State != rollout.WavePending {
		t.Fatalf("%d publications, current wave %d, wave 2 %s; want one, 1, pending", published, st.Current, st.Waves[2].State)
	}
}
