package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBinary()
	os.Exit(code)
}

func hostsFleet(names ...string) fixture.Fleet {
	var f fixture.Fleet
	for _, n := range names {
		f.Hosts = append(f.Hosts, fixture.Host{Name: n, Bento: &fixture.Bento{Enable: true}})
	}
	return f
}

func TestHappyPathThenNothingChanged(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	pub := e.Publish(t)
	for _, name := range []string{"alpha", "beta"} {
		h := e.Host(t, name)
		res := h.Run(t)
		if res.ExitCode != 0 {
			t.Fatalf("%s: exit %d", name, res.ExitCode)
		}
		want := pub[name].Built
		if got := h.ProfileTarget(t); got != want {
			t.Errorf("%s: profile -> %q, want the published system %q", name, got, want)
		}
		if got := h.Current(t); got != want {
			t.Errorf("%s: current-system -> %q, want %q", name, got, want)
		}
		if sw := h.Switches(t); len(sw) != 1 || sw[0] != want+" switch" {
			t.Errorf("%s: switch-to-configuration calls %q, want one %q", name, sw, want+" switch")
		}
		st := h.Status(t)
		if st == nil {
			t.Fatalf("%s: no status.json uploaded", name)
		}
		v := pub[name].Version
		if st.Host != name || st.AppliedVersion != v || st.SeenVersion != v || st.Stage != manifest.StageConfirmed ||
			st.Result != manifest.ResultSuccess || st.ActualToplevel != want || st.CurrentSystem != want ||
			st.Reproducible == nil || !*st.Reproducible || st.Error != "" {
			t.Errorf("%s: status.json %+v", name, st)
		}
		log := h.Log(t, st.Log)
		for _, line := range []string{"built " + want, "switch-to-configuration switch for " + name, "confirmed"} {
			if !strings.Contains(log, line) {
				t.Errorf("%s: uploaded log lacks %q:\n%s", name, line, log)
			}
		}
	}

	// Nothing changed: no download, no build, no switch; a fresh report.
	h := e.Host(t, "alpha")
	before := h.Status(t)
	res := h.Run(t)
	if res.ExitCode != 0 || !strings.Contains(res.Output(), "up to date") {
		t.Fatalf("idle tick: exit %d, output %q", res.ExitCode, res.Output())
	}
	if strings.Contains(res.Output(), "building") || strings.Contains(res.Output(), "fetched") {
		t.Errorf("idle tick fetched or built:\n%s", res.Output())
	}
	if sw := h.Switches(t); len(sw) != 1 {
		t.Errorf("idle tick switched again: %q", sw)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultUnchanged || st.AppliedVersion != before.AppliedVersion || st.Log != before.Log || !st.FinishedAt.After(before.FinishedAt) && !st.FinishedAt.Equal(before.FinishedAt) {
		t.Errorf("idle report %+v", st)
	}
}

// applied publishes alpha (and the given fleet) and runs one successful
// tick, returning the host and what was published.
func applied(t *testing.T, f fixture.Fleet) (*Env, *Host, Published) {
	t.Helper()
	e := Start(t, f)
	pub := e.Publish(t)["alpha"]
	h := e.Host(t, "alpha")
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("first tick failed: exit %d", res.ExitCode)
	}
	if h.Current(t) != pub.Built {
		t.Fatalf("first tick did not switch to %s", pub.Built)
	}
	return e, h, pub
}

func TestTwoPublicationsInTheSameSecondAreBothApplied(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	// Same file sizes, published right after: the original's minute-
	// resolution "ls -l" comparison saw nothing here.
	manifestFile := filepath.Join(e.Chroot("alpha"), manifest.ManifestFile)
	fi1, err := os.Stat(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	if v2.Version == v1.Version || v2.Built == v1.Built {
		t.Fatal("the second publication did not change anything")
	}
	// Same second: give the new manifest the old one's time (publishing
	// takes longer than a second here), so a comparison of times sees
	// nothing and only one of content sees the change.
	if err := os.Chtimes(manifestFile, fi1.ModTime(), fi1.ModTime()); err != nil {
		t.Fatal(err)
	}
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick after the second publication: exit %d", res.ExitCode)
	}
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "3" })
	v3 := e.Publish(t)["alpha"]
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick after the third publication: exit %d", res.ExitCode)
	}
	want := []string{v1.Built + " switch", v2.Built + " switch", v3.Built + " switch"}
	if got := h.Switches(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st := h.Status(t); st.AppliedVersion != v3.Version || h.ProfileTarget(t) != v3.Built {
		t.Errorf("applied %s (profile %s), want %s (%s)", st.AppliedVersion, h.ProfileTarget(t), v3.Version, v3.Built)
	}
	// Only the changed file crossed the network.
	if st := h.Status(t); st.BytesFetched == 0 || st.BytesFetched > 1000 {
		t.Errorf("the third update fetched %d bytes; only hosts/alpha/default.nix changed", st.BytesFetched)
	}
}

func TestBuildFailureKeepsTheOldSystemAndRetriesLater(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailBuild = "2", true })
	v2 := e.Publish(t)["alpha"]
	if v2.Built != "" {
		t.Fatal("the failing build succeeded on the server")
	}
	res := h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "build of alpha fails on purpose") {
		t.Fatalf("failed build: exit %d; the output must show Nix's build log", res.ExitCode)
	}
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built || len(h.Switches(t)) != 1 {
		t.Errorf("the old system was not kept: profile %s, current %s, switches %q", h.ProfileTarget(t), h.Current(t), h.Switches(t))
	}
	st := h.Status(t)
	if st.Stage != manifest.StageFailed || st.Result != manifest.ResultFailure || st.AttemptedVersion != v2.Version ||
		st.AppliedVersion != v1.Version || !strings.Contains(st.Error, "build") || st.NextRetry == nil || st.Attempts != 1 ||
		!st.NextRetry.After(st.FinishedAt.Add(59*time.Minute)) {
		t.Errorf("status after a failed build (retry in 1h): %+v", st)
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "fixture: build of alpha fails on purpose") {
		t.Errorf("the uploaded log lacks the build output:\n%s", log)
	}

	// Not every tick: the retry waits for its delay.
	res = h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "next retry after") || strings.Contains(res.Output(), "building") {
		t.Errorf("a tick before the retry is due must not build: exit %d", res.ExitCode)
	}
	// The operator, having fixed the cause on the host, asks for it now.
	res = h.Run(t, "--now")
	if !strings.Contains(res.Output(), "--now: trying version "+v2.Version+" again") || !strings.Contains(res.Output(), "attempt 2") {
		t.Errorf("bento agent run --now did not try version %s again", v2.Version)
	}
	// Not never: once due (here: the operator shortens the delay), the
	// same version is tried again.
	h.Settings["retry"] = map[string]any{"initialDelay": "1ms", "maxDelay": "1h"}
	res = h.Run(t)
	if !strings.Contains(res.Output(), "attempt 3") || !strings.Contains(res.Output(), "fails on purpose") {
		t.Errorf("the due retry did not rebuild version %s", v2.Version)
	}
	if st := h.Status(t); st.Attempts != 3 || st.NextRetry == nil || st.AttemptedVersion != v2.Version {
		t.Errorf("third failure: %+v", st)
	}
	if logs := h.Logs(t); len(logs) != 4 {
		t.Errorf("uploaded logs %v, want one per attempt (4)", logs)
	}
}

func TestActivationFailureRollsBack(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailSwitch = "2", true })
	v2 := e.Publish(t)["alpha"]
	res := h.Run(t)
	if res.ExitCode == 0 {
		t.Fatal("a failed activation exited 0")
	}
	want := []string{v1.Built + " switch", v2.Built + " switch", v1.Built + " switch"}
	if got := h.Switches(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches:\n%s\nwant the new one, then the old one again:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built {
		t.Errorf("after rollback: profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v1.Built)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.Stage != manifest.StageRolledBack || st.RollbackReason != "activation-failed" ||
		st.AppliedVersion != v1.Version || st.AttemptedVersion != v2.Version || st.CurrentSystem != v1.Built ||
		!strings.Contains(st.Error, "fails on purpose") {
		t.Errorf("status after rollback: %+v", st)
	}
}

// recordFIFO makes the host's switch record a FIFO: switch-to-configuration
// then blocks on its first line until the test reads it. The returned
// function starts reading (unblocking it); lines() returns what was read.
func recordFIFO(t *testing.T, h *Host) (start func(), lines func() []string) {
	t.Helper()
	fifo := filepath.Join(h.Dir, "switch-fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	h.Env = append(h.Env, "BENTO_FIXTURE_RECORD="+fifo)
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	start = func() {
		go func() {
			defer close(done)
			// O_RDWR keeps the FIFO open between writers, so every
			// switch-to-configuration call of the tick is read.
			f, err := os.OpenFile(fifo, os.O_RDWR, 0)
			if err != nil {
				return
			}
			t.Cleanup(func() { f.Close() })
			buf := make([]byte, 4096)
			var pending string
			for {
				n, err := f.Read(buf)
				if err != nil {
					return
				}
				pending += string(buf[:n])
				for {
					i := strings.IndexByte(pending, '\n')
					if i < 0 {
						break
					}
					mu.Lock()
					got = append(got, pending[:i])
					mu.Unlock()
					pending = pending[i+1:]
				}
			}
		}()
	}
	lines = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
	return start, lines
}

func TestServerLostAfterSwitchRollsBackAndQueuesTheReport(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	h.Settings["confirmTimeout"] = "3s"
	start, switches := recordFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	// switch-to-configuration is blocked on its record: the server goes
	// away (with every open connection) before the switch finishes.
	e.SSHD.Stop()
	start()
	res := run.Wait(t)
	if res.ExitCode == 0 {
		t.Fatal("a rollback exited 0")
	}
	want := []string{v2.Built + " switch", v1.Built + " switch"}
	if got := switches(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches %q, want the new system then the old one", got)
	}
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built {
		t.Errorf("after rollback: profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v1.Built)
	}
	if !strings.Contains(res.Output(), "waits in") {
		t.Errorf("the tick did not say its report is queued")
	}
	if st := h.Status(t); st.AttemptedVersion == v2.Version {
		t.Fatal("a report reached the stopped server")
	}

	// The server is back: the queued report is delivered first thing.
	e.SSHD.Restart(t)
	res = h.Run(t)
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.RollbackReason != "server-unreachable" || st.AttemptedVersion != v2.Version ||
		st.AppliedVersion != v1.Version || st.CurrentSystem != v1.Built {
		t.Errorf("delivered report: %+v", st)
	}
	log := h.Log(t, st.Log)
	if !strings.Contains(log, "rolled back to "+v1.Built) {
		t.Errorf("the delivered log does not tell the rollback:\n%s", log)
	}
	// Not on the first failed probe: the guard kept trying until the
	// timeout (the original rolled back on any single failure).
	if !strings.Contains(log, "confirmation probe 2:") || !strings.Contains(st.Error, "within 3s") {
		t.Errorf("the rollback did not wait for the confirmation timeout, retrying (error %q):\n%s", st.Error, log)
	}
	if res.ExitCode == 0 || strings.Contains(res.Output(), "building") {
		t.Errorf("the rolled-back version must wait for its retry, not be retried at once")
	}
}

func TestServerDownDuringTheReportQueuesIt(t *testing.T) {
	f := hostsFleet("alpha")
	e, h, v1 := applied(t, f)
	// The build fails after a while: long enough to take the server away
	// while it runs (Nix does not cache failures, so the host builds too).
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailBuild, x.BuildSeconds = "2", true, 2 })
	v2 := e.Publish(t)["alpha"]
	run := h.Start(t)
	run.WaitFor(t, "bento: building")
	e.SSHD.Stop()
	res := run.Wait(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "waits in") {
		t.Fatalf("exit %d; the tick must say the report waits", res.ExitCode)
	}
	if st := h.Status(t); st.AttemptedVersion != v1.Version {
		t.Fatalf("status.json changed while the server was down")
	}
	e.SSHD.Restart(t)
	h.Run(t)
	st := h.Status(t)
	if st.AttemptedVersion != v2.Version || st.Result != manifest.ResultFailure {
		t.Fatalf("the queued report was not delivered: %+v", st)
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "build of alpha fails on purpose") {
		t.Errorf("the queued log lost the build output:\n%s", log)
	}
	if entries, _ := os.ReadDir(filepath.Join(h.StateDir, "queue")); len(entries) != 0 {
		t.Errorf("queue not empty after delivery: %v", entries)
	}
}
