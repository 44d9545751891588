package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// killLoopPublication is one of the publications the loop's server
// alternates between.
type killLoopPublication struct {
	name     string
	version  string
	built    string
	bad      bool // its switch-to-configuration fails: it must end rolled back
	manifest []byte
	tree     string   // copies of the files below, restored when pruned
	files    []string // what the manifest names in the chroot, relative to it
}

// killLoopFiles is the number of files each publication of the kill loop
// changes.
const killLoopFiles = 60

// The kill -9 loop of issue 13: the server alternates between three
// publications (two good systems and one whose activation fails), and
// every tick is killed -9 at a random moment: after a random number of
// its progress lines plus a random delay of up to 40ms, or a random time
// into the tick (up to the length of the last tick of its kind that ran
// out, so long steps get more kills); in a quarter of
// them the server is cut off at that line too, until a tick has run
// without it (which must not switch to the new system); in a fifth of the
// others the tick that takes it up is killed too. Half the kills
// are the agent alone (systemd's KillMode=process: an orphaned nix or
// switch-to-configuration finishes on its own), half kill every process
// of the tick (a power cut). Each kill is confirmed to have ended a
// running tick. Then ticks run until the state is settled, and every
// time the host must run the old or the new system (the old one for the
// bad publication), with the profile on it, a report on the server that
// says which, one log for the attempt, and the bad system switched to at
// most once; the tick after that must switch nothing.
//
// BENTO_KILLS sets the number of kills (default 50; 10 with -short);
// the loop stops after 4 minutes either way and fails with fewer kills.
func TestKillLoop(t *testing.T) {
	kills := 50
	if testing.Short() {
		kills = 10
	}
	if s := os.Getenv("BENTO_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("BENTO_KILLS=%q: want a positive number", s)
		}
		kills = n
	}
	const budget = 4 * time.Minute
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("BENTO_KILL_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("kill loop: %d kills, seed %d (BENTO_KILL_SEED repeats the choices, not the timing)", kills, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	e := Start(t, hostsFleet("alpha"))
	h := e.Host(t, "alpha")
	saved := t.TempDir()
	var pubs []*killLoopPublication
	for i, spec := range []struct {
		name string
		bad  bool
	}{{"A", false}, {"B", false}, {"X", true}} {
		// Files that differ between the publications, so that each tick
		// downloads some and the fetch is a step a kill can land in.
		e.Fleet.Files = map[string]string{}
		for j := range killLoopFiles {
			e.Fleet.Files[fmt.Sprintf("modules/m%03d.nix", j)] = fmt.Sprintf("{ }\n# publication %s, file %d\n%s\n", spec.name, j, strings.Repeat("#", 1024))
		}
		e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailSwitch = strconv.Itoa(i+1), spec.bad })
		p := e.Publish(t)["alpha"]
		if p.Built == "" {
			t.Fatalf("publication %s was not built", spec.name)
		}
		data, err := os.ReadFile(filepath.Join(e.Chroot("alpha"), manifest.ManifestFile))
		if err != nil {
			t.Fatal(err)
		}
		kp := &killLoopPublication{name: spec.name, version: p.Version, built: p.Built, bad: spec.bad, manifest: data,
			tree: filepath.Join(saved, p.Version)}
		// What the manifest names on the server (its objects in format
		// 2), kept aside: the loop publishes the three in turn, by hand.
		m, err := manifest.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m.Files {
			rel := filepath.FromSlash(m.RemotePath(f))
			kp.files = append(kp.files, rel)
			copyFile(t, filepath.Join(e.Chroot("alpha"), rel), filepath.Join(kp.tree, rel))
		}
		pubs = append(pubs, kp)
	}
	byBuilt := map[string]*killLoopPublication{}
	for _, p := range pubs {
		byBuilt[p.built] = p
	}
	publish := func(p *killLoopPublication) {
		for _, rel := range p.files {
			if dst := filepath.Join(e.Chroot("alpha"), rel); !exists(dst) {
				copyFile(t, filepath.Join(p.tree, rel), dst)
			}
		}
		path := filepath.Join(e.Chroot("alpha"), manifest.ManifestFile)
		if err := os.WriteFile(path+".tmp", p.manifest, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	publish(pubs[0])
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != pubs[0].built {
		t.Fatalf("first tick: exit %d", res.ExitCode)
	}
	mark := "BENTO_FIXTURE_CURRENT_SYSTEM=" + h.CurrentSystem + "\x00"

	// Progress lines seen in a whole tick, per kind of publication (the
	// random line is drawn below it); learnt from ticks that ran out.
	maxLines := map[string]int{"new": 16, "bad": 18, "same": 10}
	tickLength := map[string]time.Duration{"new": 3 * time.Second, "bad": 3 * time.Second, "same": 2 * time.Second}
	steps := map[string]int{}
	modes := map[string]int{}
	outcomes := map[string]int{}
	recoveries := map[string]int{}
	done, missed, iterations := 0, 0, 0
	current := pubs[0]
	started := time.Now()
	for done < kills && time.Since(started) < budget {
		iterations++
		var choices []*killLoopPublication
		for _, p := range pubs {
			if p != current {
				choices = append(choices, p)
			}
		}
		target := choices[rng.IntN(len(choices))]
		old := h.Current(t)
		kind := "new"
		switch {
		case target.bad:
			kind = "bad"
		case target.built == old:
			kind = "same"
		}
		publish(target)
		current = target
		switchesBefore := len(h.Switches(t))
		logsBefore := map[string]bool{}
		for _, l := range h.Logs(t) {
			logsBefore[l] = true
		}

		// Half the moments are a line of progress plus up to 40ms, half a
		// time into the tick (so that long steps get more kills).
		byTime := rng.IntN(2) == 0
		line := rng.IntN(maxLines[kind] + 1)
		delay := time.Duration(rng.IntN(40)) * time.Millisecond
		if byTime {
			line, delay = 0, time.Duration(rng.Int64N(int64(tickLength[kind])))
		}
		powerCut := rng.IntN(2) == 0
		serverDown := rng.IntN(4) == 0
		tickStart := time.Now()
		run := h.Start(t)
		seen, ran := run.waitLines(line)
		if serverDown {
			// The server is cut off at that moment, and stays away for the
			// kill and the next tick.
			e.SSHD.Stop()
		}
		if ran {
			// The random part of the moment, not a wait for an event.
			select {
			case <-time.After(delay):
			case <-run.done:
			}
		}
		killed := run.killWhileRunning()
		// killedTicks counts the ticks of this iteration that were killed:
		// each may leave the live log it was uploading (live progress).
		killedTicks := 0
		if killed {
			killedTicks++
		}
		if powerCut {
			killProcs(t, mark)
		}
		if !killed {
			missed++
			if !serverDown {
				// The tick ran out: draw from its real length from now on.
				maxLines[kind] = countLines(run.Output())
				tickLength[kind] = time.Since(tickStart)
			}
		} else {
			done++
			step := killStep(run.Output())
			steps[step]++
			if powerCut {
				modes["power cut (all processes)"]++
			} else {
				modes["agent only"]++
			}
			if serverDown {
				modes["with the server cut off"]++
			}
			if byTime {
				modes["moment: time into the tick"]++
			} else {
				modes["moment: line of progress"]++
			}
			t.Logf("kill %d: %s publication %s, after line %d (%d seen) + %s, %s: last line %q",
				done, kind, target.name, line, seen, delay, map[bool]string{true: "power cut", false: "agent only"}[powerCut], lastLine(run.Output()))
		}
		// Orphans of an agent-only kill finish on their own.
		waitFor(t, "the killed tick's processes to end", func() bool { return len(procsWith(mark)) == 0 })

		var recovery []string
		if killed && !serverDown && rng.IntN(5) == 0 {
			// The tick that takes it up is killed too (a build that runs
			// out of memory every time, a host that keeps losing power).
			again := h.Start(t)
			_, ran := again.waitLines(rng.IntN(8))
			if ran {
				select {
				case <-time.After(time.Duration(rng.IntN(40)) * time.Millisecond):
				case <-again.done:
				}
			}
			if again.killWhileRunning() {
				killedTicks++
				done++
				steps[killStep(again.Output())]++
				modes["second kill, of the tick taking it up"]++
				if rng.IntN(2) == 0 {
					killProcs(t, mark)
				}
			}
			recovery = append(recovery, again.Output())
			waitFor(t, "the killed tick's processes to end", func() bool { return len(procsWith(mark)) == 0 })
		}
		if serverDown {
			// A tick without the server may restore the old system, never
			// switches to the new one, leaves the profile on what runs, and
			// says it failed.
			before := len(h.Switches(t))
			res := runQuiet(t, h)
			recovery = append(recovery, res.Output())
			for _, s := range h.Switches(t)[before:] {
				if s == target.built+" switch" {
					t.Fatalf("iteration %d: a tick without the server switched to %s:\n%s", iterations, target.built, indent(res.Output()))
				}
			}
			if res.ExitCode == 0 {
				t.Fatalf("iteration %d: a tick without the server exited 0:\n%s", iterations, indent(res.Output()))
			}
			if cur, prof := h.Current(t), h.ProfileTarget(t); cur != prof {
				t.Fatalf("iteration %d: without the server: current %s, profile %s", iterations, cur, prof)
			}
			e.SSHD.Restart(t)
		}
		// Settle: ticks until nothing is under way any more.
		for i := 0; ; i++ {
			if i == 3 {
				t.Fatalf("iteration %d: not settled after 3 ticks: state %+v", iterations, readAgentState(t, h))
			}
			res := runQuiet(t, h)
			recovery = append(recovery, res.Output())
			s := readAgentState(t, h)
			if s.Switch == nil && !s.Attempt.Running && queued(h) == 0 {
				break
			}
		}
		if killed {
			recoveries[recoveryKind(strings.Join(recovery, "\n"))]++
		}

		// What the user sees.
		cur, prof := h.Current(t), h.ProfileTarget(t)
		fail := func(format string, args ...any) {
			t.Fatalf("iteration %d (%s publication %s, old %s): %s\nkilled tick:\n%s\nrecovery:\n%s", iterations, kind, target.name,
				byBuilt[old].name, fmt.Sprintf(format, args...), indent(run.Output()), indent(strings.Join(recovery, "----\n")))
		}
		if cur != prof {
			fail("current %s, profile %s: they differ", cur, prof)
		}
		if cur != old && cur != target.built {
			fail("runs %s: neither the old %s nor the new %s", cur, old, target.built)
		}
		if target.bad && cur != old {
			fail("runs the bad system %s", cur)
		}
		runs := byBuilt[cur]
		st := h.Status(t)
		if st == nil || st.CurrentSystem != cur || st.AppliedVersion != runs.version || st.AttemptedVersion != target.version {
			fail("report %+v does not say the host runs %s (version %s) after attempting %s", st, runs.name, runs.version, target.version)
		}
		ok := st.Result == manifest.ResultSuccess || st.Result == manifest.ResultUnchanged
		if cur == target.built && cur != old && !ok {
			fail("runs the new system but reports %s", st.Result)
		}
		if cur != target.built && (ok || st.Result == "") {
			fail("runs the old system but reports %q", st.Result)
		}
		outcome := "new system"
		if cur != target.built {
			outcome = "old system (" + string(st.Result) + ")"
		}
		if kind == "same" {
			outcome = "already running it"
		}
		if killed {
			outcomes[outcome]++
		}
		sw := h.Switches(t)[switchesBefore:]
		toTarget := 0
		for _, s := range sw {
			if s == target.built+" switch" {
				toTarget++
			}
		}
		if toTarget > 1 {
			fail("switched to %s %d times: %q", target.built, toTarget, sw)
		}
		// One log for the tick that finished the attempt; a killed tick may
		// leave the partial live log it was uploading, but no more than one.
		newLogs := 0
		for _, l := range h.Logs(t) {
			if !logsBefore[l] && strings.HasPrefix(l, target.version+"-") {
				newLogs++
			}
		}
		if newLogs < 1 || newLogs > 1+killedTicks {
			fail("%d new logs for the attempt of %s (%d killed ticks), want 1 and at most one more per killed tick", newLogs, target.version, killedTicks)
		}
		// Settled means settled: the next tick switches nothing.
		res := runQuiet(t, h)
		if n := len(h.Switches(t)) - switchesBefore; n != len(sw) {
			fail("the tick after the settled state switched: %q", h.Switches(t)[switchesBefore+len(sw):])
		}
		if !strings.Contains(res.Output(), "up to date") && !strings.Contains(res.Output(), "next retry after") {
			fail("the tick after the settled state neither idled nor waited:\n%s", res.Output())
		}
	}
	elapsed := time.Since(started).Round(time.Second)
	t.Logf("kill loop: %d kills (%d ticks ended before their kill and do not count) in %d iterations, %s",
		done, missed, iterations, elapsed)
	t.Logf("kills per step (last line printed before the kill): %s", figures(steps))
	t.Logf("kills per mode: %s", figures(modes))
	t.Logf("how the next tick took it up: %s", figures(recoveries))
	t.Logf("outcomes: %s", figures(outcomes))
	if done < kills {
		t.Errorf("only %d of %d kills within %s", done, kills, budget)
	}
}

// waitLines waits for n progress lines of the tick; ran is false when it
// ended first. The lines channel drops lines only beyond 1024 unread.
func (r *Running) waitLines(n int) (seen int, ran bool) {
	for seen < n {
		select {
		case _, ok := <-r.lines:
			if !ok {
				return seen, false
			}
			seen++
		case <-r.done:
			return seen, false
		}
	}
	return seen, true
}

// killStep names the step of a tick from the last line it printed.
func killStep(out string) string {
	l := lastLine(out)
	switch {
	case strings.Contains(out, "bento: rolled back to "):
		return "record and report"
	case strings.Contains(out, "rolling back to"):
		return "rollback"
	case l == "":
		return "start (config, lock, state, connect, manifest)"
	case strings.Contains(l, "applying version"), strings.Contains(l, "fetched version"):
		return "fetch"
	case strings.Contains(l, "bento: building"):
		return "build"
	case strings.Contains(l, "bento: built"), strings.Contains(l, "switching to"), strings.Contains(l, "setting profile"):
		return "profile (journal, nix-env --set)"
	case strings.Contains(l, "switch-to-configuration"):
		return "switch-to-configuration"
	case strings.Contains(l, "switched; checking"), strings.Contains(l, "confirmation probe"):
		return "confirmation"
	case strings.Contains(l, "fails on purpose"), strings.Contains(l, "activation:"):
		return "rollback"
	case strings.Contains(l, "up to date"), strings.Contains(l, "already runs"):
		return "nothing to switch"
	default:
		return "record and report"
	}
}

func recoveryKind(out string) string {
	switch {
	case strings.Contains(out, "the agent stopped during the activation"):
		switch {
		case strings.Contains(out, "runs and the server answers: confirmed"):
			return "journal: confirmed"
		case strings.Contains(out, "stopped while rolling back"):
			return "journal: rollback recorded"
		case strings.Contains(out, "rolled back to"):
			return "journal: rolled back"
		default:
			return "journal: failed"
		}
	case strings.Contains(out, "was interrupted like the one before"):
		return "interrupted twice: failed, reported, waits for its retry"
	case strings.Contains(out, "stopped after recording the outcome"):
		return "recorded outcome adopted"
	case strings.Contains(out, "applying version"):
		return "attempt re-run"
	case strings.Contains(out, "delivered"):
		return "queued report delivered"
	default:
		return "nothing left to do"
	}
}

func lastLine(out string) string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	return lines[len(lines)-1]
}

func countLines(out string) int { return strings.Count(out, "\n") }

func figures(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func queued(h *Host) int {
	entries, _ := filepath.Glob(filepath.Join(h.StateDir, "queue", "*.json"))
	return len(entries)
}

// procsWith lists the processes whose environment holds mark.
func procsWith(mark string) []int {
	var pids []int
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, f := range envs {
		data, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(data, []byte(mark)) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killProcs kills -9 every process whose environment holds mark, until
// none is left (one may fork while the others die).
func killProcs(t testing.TB, mark string) {
	t.Helper()
	waitFor(t, "every process of the tick killed", func() bool {
		pids := procsWith(mark)
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		return len(pids) == 0
	})
}

// runQuiet is Host.Run without logging the output (the loop's failure
// message quotes what matters).
func runQuiet(t testing.TB, h *Host) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := h.Command(t, ctx)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	res := Result{Stdout: out.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("e2e: running bento agent run: %v", err)
		}
		res.ExitCode = ee.ExitCode()
	}
	return res
}

// copyFile copies src to dst (its directories made), keeping the mode.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}
