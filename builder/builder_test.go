package builder_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

func runner() *nix.Runner { return &nix.Runner{Env: fixture.Env()} }

// nonce makes generations no earlier run has built, so that every test
// really builds instead of finding its result in the shared store.
func nonce(t *testing.T) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// writeFleet generates a fleet and discovers it as bento does.
func writeFleet(t *testing.T, r *nix.Runner, f fixture.Fleet) []fleet.Host {
	t.Helper()
	dir := t.TempDir()
	if err := fixture.Write(dir, f); err != nil {
		t.Fatal(err)
	}
	if f.Classic {
		r.Env = append(r.Env, "NIX_PATH="+fixture.ClassicNixPath(dir))
	}
	fl, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir})
	if err != nil {
		t.Fatal(err)
	}
	return fl.Hosts
}

func byHost(results []builder.Result) map[string]builder.Result {
	m := make(map[string]builder.Result)
	for _, r := range results {
		m[r.Host] = r
	}
	return m
}

func storePathValid(t *testing.T, p string) bool {
	t.Helper()
	cmd := exec.Command("nix-store", "--check-validity", p)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	return cmd.Run() == nil
}

// recorder is a Progress that keeps every event, to check what a display
// would have shown.
type recorder struct {
	mu     sync.Mutex
	begin  []string
	phases map[string][]builder.Phase
	lines  map[string][]string
	done   []string
	ended  bool
}

func newRecorder() *recorder {
	return &recorder{phases: map[string][]builder.Phase{}, lines: map[string][]string{}}
}

func (r *recorder) Begin(h []string) { r.begin = h }
func (r *recorder) Phase(h string, p builder.Phase) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.phases[h] = append(r.phases[h], p)
}
func (r *recorder) Log(h, l string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[h] = append(r.lines[h], l)
}
func (r *recorder) Done(res builder.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = append(r.done, res.Host)
}
func (r *recorder) End() { r.ended = true }

func TestBuildGoodAndFailingHosts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		jobs    int
		classic bool
	}{
		{"jobs1", 1, false},
		{"jobs4", 4, false},
		{"classic", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gen := nonce(t)
			r := runner()
			hosts := writeFleet(t, r, fixture.Fleet{Classic: tc.classic, Hosts: []fixture.Host{
				{Name: "alpha", Bento: &fixture.Bento{Enable: true}, Generation: gen},
				{Name: "bad", Bento: &fixture.Bento{Enable: true}, Generation: gen, FailBuild: true},
				{Name: "gamma", Bento: &fixture.Bento{Enable: true}, Generation: gen},
				{Name: "pi.home", Bento: &fixture.Bento{Enable: true}, Generation: gen},
			}})
			// A host whose configuration does not evaluate.
			ghost := hosts[0]
			ghost.Name, ghost.Attr = "ghost", fleet.ConfigAttr("ghost")
			ghost.ClassicConfig = filepath.Join(filepath.Dir(filepath.Dir(ghost.ClassicConfig)), "ghost", "configuration.nix")
			hosts = append(hosts, ghost)
			state := t.TempDir()
			rec := newRecorder()
			results, err := builder.Build(context.Background(), r, hosts, builder.Options{Jobs: tc.jobs, StateDir: state, Progress: rec})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := len(results), len(hosts); got != want {
				t.Fatalf("%d results for %d hosts", got, want)
			}
			for i, res := range results {
				if res.Host != hosts[i].Name {
					t.Errorf("result %d is for %s, want %s (input order)", i, res.Host, hosts[i].Name)
				}
			}
			m := byHost(results)
			for _, name := range []string{"alpha", "gamma", "pi.home"} {
				res := m[name]
				if res.Status != builder.StatusBuilt || !res.OK() || res.Err != nil {
					t.Errorf("%s: status %s, err %v; want built", name, res.Status, res.Err)
					continue
				}
				version, err := os.ReadFile(filepath.Join(res.OutPath, "nixos-version"))
				if err != nil || strings.TrimSpace(string(version)) != gen {
					t.Errorf("%s: out path %s holds version %q (%v), want %q", name, res.OutPath, version, err, gen)
				}
				if !strings.HasSuffix(res.DrvPath, ".drv") || !storePathValid(t, res.DrvPath) {
					t.Errorf("%s: drv path %q is not a valid derivation", name, res.DrvPath)
				}
				log, err := os.ReadFile(res.LogFile)
				if err != nil || !strings.Contains(string(log), "built "+name) {
					t.Errorf("%s: log %s lacks the builder's output: %q (%v)", name, res.LogFile, log, err)
				}
				if !strings.HasPrefix(res.LogFile, filepath.Join(state, "logs", name)+"/") {
					t.Errorf("%s: log file %s is not under the state dir's logs/%s", name, res.LogFile, name)
				}
				if p := rec.phases[name]; !slices.Equal(p, []builder.Phase{builder.PhaseEvaluating, builder.PhaseWaiting, builder.PhaseBuilding}) {
					t.Errorf("%s: phases %v, want evaluating, waiting, building", name, p)
				}
			}
			bad := m["bad"]
			if bad.Status != builder.StatusFailed || bad.OK() || bad.Err == nil {
				t.Fatalf("bad: status %s, err %v; want failed", bad.Status, bad.Err)
			}
			if !strings.HasPrefix(bad.Err.Error(), "host bad: build: ") || !strings.Contains(bad.Reason(), "failed with exit code 1") {
				t.Errorf("bad: error %q / reason %q should name the host and quote nix", bad.Err, bad.Reason())
			}
			var ne *nix.Error
			if !errors.As(bad.Err, &ne) {
				t.Errorf("bad: error %v does not wrap a *nix.Error", bad.Err)
			}
			log, err := os.ReadFile(bad.LogFile)
			if err != nil || !strings.Contains(string(log), "fixture: build of bad fails on purpose") {
				t.Errorf("bad: log %s lacks the builder's message: %q (%v)", bad.LogFile, log, err)
			}
			if !slices.Contains(rec.lines["bad"], "fixture: build of bad fails on purpose") {
				t.Errorf("bad: progress did not see the builder's line; got %q", rec.lines["bad"])
			}
			if roots := gcRoots(t, filepath.Join(state, "gcroots", "bad")); len(roots) != 0 {
				t.Errorf("bad: a failed build left GC roots %v", roots)
			}
			gh := m["ghost"]
			if gh.Status != builder.StatusFailed || !strings.HasPrefix(gh.Reason(), "evaluate: error: ") || gh.DrvPath != "" {
				t.Errorf("ghost: status %s, reason %q; want failed to evaluate", gh.Status, gh.Reason())
			}
			if p := rec.phases["ghost"]; !slices.Equal(p, []builder.Phase{builder.PhaseEvaluating}) {
				t.Errorf("ghost: phases %v, want only evaluating", p)
			}
			slices.Sort(rec.done)
			if !slices.Equal(rec.done, []string{"alpha", "bad", "gamma", "ghost", "pi.home"}) || !rec.ended || len(rec.begin) != 5 {
				t.Errorf("progress saw begin %v, done %v, end %v", rec.begin, rec.done, rec.ended)
			}
			records, err := builder.LastBuilds(state)
			if err != nil {
				t.Fatal(err)
			}
			if len(records) != 3 || records["alpha"].OutPath != m["alpha"].OutPath || records["alpha"].DrvPath != m["alpha"].DrvPath {
				t.Errorf("records %+v do not match the successful builds", records)
			}
		})
	}
}

// gcRoots returns the GC roots Nix itself knows about under dir.
func gcRoots(t *testing.T, dir string) map[string]string {
	t.Helper()
	cmd := exec.Command("nix-store", "--gc", "--print-roots")
	cmd.Env = append(os.Environ(), fixture.Env()...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store --gc --print-roots: %v", err)
	}
	roots := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		link, target, ok := strings.Cut(l, " -> ")
		if ok && strings.HasPrefix(link, dir+"/") {
			roots[strings.TrimPrefix(link, dir+"/")] = target
		}
	}
	return roots
}

func TestGCRootsKeepCurrentAndPrevious(t *testing.T) {
	r := runner()
	dir := t.TempDir()
	state := t.TempDir()
	build := func(gen string) builder.Result {
		t.Helper()
		if err := fixture.Write(dir, fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}, Generation: gen}}}); err != nil {
			t.Fatal(err)
		}
		fl, err := eval.Discover(context.Background(), r, eval.Options{Ref: dir})
		if err != nil {
			t.Fatal(err)
		}
		res, err := builder.Build(context.Background(), r, fl.Hosts, builder.Options{Jobs: 1, StateDir: state})
		if err != nil {
			t.Fatal(err)
		}
		if !res[0].OK() {
			t.Fatalf("build of generation %s: %v", gen, res[0].Err)
		}
		return res[0]
	}
	n := nonce(t)
	g1, g2, g3 := build(n+"-1"), build(n+"-2"), build(n+"-3")
	rootsDir := filepath.Join(state, "gcroots")

	// Each root is named after its build's log.
	root := func(r builder.Result) string { return "alpha/" + strings.TrimSuffix(filepath.Base(r.LogFile), ".log") }
	want := map[string]string{root(g3): g3.OutPath, root(g2): g2.OutPath}
	if got := gcRoots(t, rootsDir); !mapsEqual(got, want) {
		t.Errorf("after three builds Nix's GC roots are %v, want %v", got, want)
	}
	entries, _ := os.ReadDir(filepath.Join(rootsDir, "alpha"))
	var names []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".lock") {
			names = append(names, "alpha/"+e.Name())
		}
	}
	if want := []string{root(g2), root(g3)}; !slices.Equal(names, want) {
		t.Errorf("gcroots/alpha holds %v, want only %v", names, want)
	}
	// The first build is no longer rooted: a GC may take it.
	cmd := exec.Command("nix-store", "--delete", g1.OutPath)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("the oldest build %s is still rooted: %v: %s", g1.OutPath, err, out)
	}
	// Deleting a rooted build must be refused.
	cmd = exec.Command("nix-store", "--delete", g2.OutPath)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	if err := cmd.Run(); err == nil {
		t.Errorf("the previous build %s was not protected from the GC", g2.OutPath)
	}

	// Rebuilding the same system realises nothing (its derivation and GC
	// root are those of the last build) and keeps the roots as they are.
	g3again := build(n + "-3")
	if g3again.OutPath != g3.OutPath || !g3again.Unchanged {
		t.Fatalf("same generation gave %s (unchanged %v), then %s", g3.OutPath, g3again.Unchanged, g3again.OutPath)
	}
	if log, _ := os.ReadFile(g3again.LogFile); !strings.Contains(string(log), "bento: unchanged: "+g3.DrvPath) || strings.Contains(string(log), "nix-store --realise") {
		t.Errorf("log of the unchanged rebuild should say it was not realised again:\n%s", log)
	}
	if got := gcRoots(t, rootsDir); !mapsEqual(got, want) {
		t.Errorf("after a rebuild of the same system GC roots are %v, want %v (as before)", got, want)
	}
	// Once its GC root is gone, the same system is realised again, and
	// keeps the build before it as previous.
	if err := os.Remove(filepath.Join(rootsDir, root(g3))); err != nil {
		t.Fatal(err)
	}
	g3again = build(n + "-3")
	if g3again.OutPath != g3.OutPath || g3again.Unchanged {
		t.Fatalf("without its GC root: out %s, unchanged %v; want %s realised again", g3again.OutPath, g3again.Unchanged, g3.OutPath)
	}
	want = map[string]string{root(g3again): g3.OutPath, root(g2): g2.OutPath}
	if got := gcRoots(t, rootsDir); !mapsEqual(got, want) {
		t.Errorf("after a rebuild of the same system GC roots are %v, want %v", got, want)
	}
	recs, err := builder.LastBuilds(state)
	if err != nil {
		t.Fatal(err)
	}
	rec := recs["alpha"]
	if rec.OutPath != g3.OutPath || rec.Previous != g2.OutPath || rec.DrvPath != g3.DrvPath || rec.BuiltAt.IsZero() {
		t.Errorf("record %+v, want out %s previous %s", rec, g3.OutPath, g2.OutPath)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestDryRunBuildsNothing(t *testing.T) {
	r := runner()
	gen := nonce(t)
	hosts := writeFleet(t, r, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}, Generation: gen, Kernel: gen},
	}})
	state := t.TempDir()
	rec := newRecorder()
	results, err := builder.Build(context.Background(), r, hosts, builder.Options{Jobs: 2, StateDir: state, DryRun: true, Progress: rec})
	if err != nil {
		t.Fatal(err)
	}
	res := results[0]
	if res.Status != builder.StatusDryRun || !res.OK() {
		t.Fatalf("status %s, err %v; want dry-run", res.Status, res.Err)
	}
	if !storePathValid(t, res.DrvPath) {
		t.Errorf("dry run did not instantiate %s", res.DrvPath)
	}
	if res.OutPath == "" || storePathValid(t, res.OutPath) {
		t.Errorf("dry run produced (or did not name) the out path %q", res.OutPath)
	}
	if p := rec.phases["alpha"]; !slices.Equal(p, []builder.Phase{builder.PhaseEvaluating}) {
		t.Errorf("dry run phases %v, want only evaluating", p)
	}
	if roots := gcRoots(t, filepath.Join(state, "gcroots")); len(roots) != 0 {
		t.Errorf("dry run made GC roots %v", roots)
	}
	if recs, err := builder.LastBuilds(state); err != nil || len(recs) != 0 {
		t.Errorf("dry run wrote records %v (%v)", recs, err)
	}
}

func TestCopyTo(t *testing.T) {
	r := runner()
	gen := nonce(t)
	hosts := writeFleet(t, r, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}, Generation: gen},
		{Name: "beta", Bento: &fixture.Bento{Enable: true}, Generation: gen},
	}})
	key := filepath.Join(t.TempDir(), "secret.key")
	genKey := exec.Command("nix", "key", "generate-secret", "--key-name", "bento-test-1")
	genKey.Env = append(os.Environ(), fixture.Env()...)
	out, err := genKey.Output()
	if err != nil {
		t.Fatalf("nix key generate-secret: %v", err)
	}
	if err := os.WriteFile(key, out, 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("file cache, signed", func(t *testing.T) {
		cache := "file://" + t.TempDir()
		results, err := builder.Build(context.Background(), r, hosts, builder.Options{Jobs: 2, StateDir: t.TempDir(), CopyTo: cache, SignKey: key})
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range results {
			if !res.OK() {
				t.Fatalf("%s: %s: %v / %v", res.Host, res.Status, res.Err, res.CopyErr)
			}
			cmd := exec.Command("nix", "path-info", "--recursive", "--sigs", "--store", cache, res.OutPath)
			cmd.Env = append(os.Environ(), fixture.Env()...)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: nix path-info --store %s: %v", res.Host, cache, err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			// toplevel, kernel, initrd, modules: the whole closure.
			if len(lines) != 4 {
				t.Errorf("%s: the cache holds %d paths of the closure, want 4:\n%s", res.Host, len(lines), out)
			}
			for _, l := range lines {
				if !strings.Contains(l, "bento-test-1:") {
					t.Errorf("%s: %s is not signed with the key", res.Host, l)
				}
			}
		}
	})

	t.Run("unknown store URL", func(t *testing.T) {
		state := t.TempDir()
		results, err := builder.Build(context.Background(), r, hosts, builder.Options{Jobs: 2, StateDir: state, CopyTo: "bogus://nowhere"})
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range results {
			if res.Status != builder.StatusBuilt || res.Err != nil {
				t.Errorf("%s: a failed copy must leave the build counted as done: %s %v", res.Host, res.Status, res.Err)
			}
			if res.OK() || res.CopyErr == nil || !strings.Contains(res.CopyErr.Error(), "don't know how to open Nix store 'bogus://nowhere'") {
				t.Errorf("%s: copy error %v should quote nix", res.Host, res.CopyErr)
			}
			if want := "host " + res.Host + ": copy to bogus://nowhere: "; !strings.HasPrefix(res.CopyErr.Error(), want) {
				t.Errorf("%s: copy error %q should start with %q", res.Host, res.CopyErr, want)
			}
		}
		if recs, _ := builder.LastBuilds(state); len(recs) != 2 {
			t.Errorf("builds whose copy failed were not recorded: %v", recs)
		}
	})
}

func TestBadOptions(t *testing.T) {
	host := fleet.Host{Name: "alpha", Managed: true, Enable: true, Layout: fleet.LayoutFlake, Ref: "/nonexistent", Attr: fleet.ConfigAttr("alpha")}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		hosts []fleet.Host
		opts  builder.Options
		want  string
	}{
		{"jobs 0", []fleet.Host{host}, builder.Options{Jobs: 0}, "jobs must be at least 1, got 0"},
		{"negative jobs", []fleet.Host{host}, builder.Options{Jobs: -3}, "jobs must be at least 1, got -3"},
		{"negative max-jobs", []fleet.Host{host}, builder.Options{Jobs: 1, MaxJobs: -1}, "max-jobs must be 0"},
		{"no hosts", nil, builder.Options{Jobs: 1}, "no host to build"},
		{"twice", []fleet.Host{host, host}, builder.Options{Jobs: 1}, "host alpha is listed twice"},
		{"bad name", []fleet.Host{{Name: "../x"}}, builder.Options{Jobs: 1}, `invalid host name "../x"`},
		{"state dir under a file", []fleet.Host{host}, builder.Options{Jobs: 1, StateDir: filepath.Join(notDir, "state")}, "state directory " + notDir + "/state is not usable"},
		{"missing sign key", []fleet.Host{host}, builder.Options{Jobs: 1, CopyTo: "file:///tmp/x", SignKey: "/nonexistent/key"}, "signing key: open /nonexistent/key"},
		{"sign key without copy", []fleet.Host{host}, builder.Options{Jobs: 1, SignKey: notDir}, "add --copy-to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.StateDir == "" {
				tc.opts.StateDir = filepath.Join(t.TempDir(), "state")
			}
			res, err := builder.Build(context.Background(), runner(), tc.hosts, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans several lines", err)
			}
			if res != nil {
				t.Errorf("results %v returned with a setup error", res)
			}
			if _, err := os.Stat(tc.opts.StateDir); err == nil {
				t.Errorf("state directory %s was created despite the error", tc.opts.StateDir)
			}
		})
	}
}

func TestLastBuildsBadInput(t *testing.T) {
	recs, err := builder.LastBuilds(filepath.Join(t.TempDir(), "never-used"))
	if err != nil || len(recs) != 0 {
		t.Errorf("unused state dir: %v, %v; want empty", recs, err)
	}
	state := t.TempDir()
	if err := os.MkdirAll(filepath.Join(state, "builds"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(state, "builds", "alpha.json")
	if err := os.WriteFile(p, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := builder.LastBuilds(state); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("corrupt record: error %v should name %s", err, p)
	}
}

func TestResultJSON(t *testing.T) {
	res := builder.Result{Host: "alpha", Status: builder.StatusFailed, Duration: 1500 * time.Millisecond,
		Err: &fleet.HostError{Host: "alpha", Stage: "build", Err: &nix.Error{Host: "alpha", Command: []string{"nix", "build"}, Message: "error: boom", Err: errors.New("exit status 1")}}}
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got["host"] != "alpha" || got["state"] != "failed" || got["ok"] != false || got["durationSeconds"] != 1.5 || got["error"] != "build: error: boom" {
		t.Errorf("JSON %s", data)
	}
}
