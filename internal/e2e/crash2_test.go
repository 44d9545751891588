package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// Issue 13, end to end: each test stops the agent at a named moment,
// found from its own output or held there by a blocking fixture (a FIFO
// switch-to-configuration waits on, a network that stops forwarding), and
// asserts what a user sees afterwards.

// SIGTERM while switch-to-configuration runs (systemd stopping the agent,
// a shutdown, Ctrl-C): the switch is not cut in half, the guard confirms,
// the outcome is recorded and reported, and only then does the agent stop.
func TestSIGTERMDuringTheSwitchLetsItFinish(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	start, switches := recordFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	// The switch is held on its record for as long as the test wants:
	// the signal arrives while it runs.
	waitProcs(t, "BENTO_FIXTURE_RECORD="+filepath.Join(h.Dir, "switch-fifo"), func(n int) bool { return n > 0 })
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	run.WaitFor(t, "signal received: stopping after the activation finishes")
	select {
	case <-run.done:
		t.Fatalf("the agent ended on SIGTERM before the switch finished:\n%s", run.Output())
	default:
	}
	start()
	res := run.Wait(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "stopped after the activation finished") {
		t.Errorf("exit %d: a stopped tick must say it stopped after the activation", res.ExitCode)
	}
	if got := switches(); len(got) != 1 || got[0] != v2.Built+" switch" {
		t.Errorf("switches %q, want the one to %s, finished and not rolled back", got, v2.Built)
	}
	if h.ProfileTarget(t) != v2.Built || h.Current(t) != v2.Built {
		t.Errorf("profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v2.Built)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultSuccess || st.Stage != manifest.StageConfirmed || st.AppliedVersion != v2.Version ||
		st.CurrentSystem != v2.Built || st.Attempts != 1 {
		t.Errorf("status after SIGTERM during the switch: %+v (v1 %s)", st, v1.Version)
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "signal received: stopping after the activation finishes") || !strings.Contains(log, "confirmed") {
		t.Errorf("the uploaded log does not show the signal and the confirmation:\n%s", log)
	}
	if s := readAgentState(t, h); s.Attempt.Running || s.Switch != nil || s.AppliedVersion != v2.Version {
		t.Errorf("state after the stop: %+v", s)
	}
	// Nothing left to settle: the next tick is an idle one.
	if res := h.Run(t); res.ExitCode != 0 || !strings.Contains(res.Output(), "up to date") || len(switches()) != 1 {
		t.Errorf("the tick after the stop: exit %d, switches %q", res.ExitCode, switches())
	}
}

// SIGTERM in the confirmation window, the server gone: the guard is not
// skipped. The agent keeps probing until confirmTimeout, rolls back, queues
// the report and only then stops; the report reaches the server later.
func TestSIGTERMInTheConfirmationWindowStillRollsBack(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	h.Settings["confirmTimeout"] = "3s"
	start, switches := recordFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	e.SSHD.Stop()
	start()
	run.WaitFor(t, "confirmation probe 1:")
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	run.WaitFor(t, "signal received: stopping after the activation finishes")
	res := run.Wait(t)
	want := []string{v2.Built + " switch", v1.Built + " switch"}
	if got := switches(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches %q, want %q: the guard must run to its end", got, want)
	}
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built {
		t.Errorf("profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v1.Built)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "waits in") {
		t.Errorf("exit %d; the stopped tick must queue its report", res.ExitCode)
	}
	e.SSHD.Restart(t)
	h.Run(t)
	if st := h.Status(t); st.Result != manifest.ResultRolledBack || st.RollbackReason != "server-unreachable" ||
		st.AttemptedVersion != v2.Version || st.CurrentSystem != v1.Built {
		t.Errorf("the delivered report: %+v", st)
	}
}

// The server goes away when the switch starts and the agent is killed -9
// while it waits for the confirmation: the journal keeps the guard. A
// later tick before the deadline leaves the switch alone; the first one
// after it, the server still down, rolls back; once the server is back the
// rollback is reported, once, and the bad version waits for its retry.
func TestKilledInTheConfirmationWindowRollsBackLater(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	h.Settings["confirmTimeout"] = "15s"
	start, switches := recordFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	e.SSHD.Stop()
	start()
	run.WaitFor(t, "confirmation probe 1:")
	killConfirmed(t, run)

	s := readAgentState(t, h)
	if s.Switch == nil || s.Switch.To != v2.Built || s.Switch.From != v1.Built {
		t.Fatalf("no switch journal after a kill in the confirmation window: %+v", s)
	}
	if h.ProfileTarget(t) != v2.Built || h.Current(t) != v2.Built {
		t.Fatalf("the killed tick's switch did not take: profile %s, current %s", h.ProfileTarget(t), h.Current(t))
	}

	// Before the deadline: unconfirmed, but not given up yet.
	res := h.Run(t)
	if time.Now().Before(s.Switch.ConfirmBy) {
		if res.ExitCode == 0 || !strings.Contains(res.Output(), "is not confirmed: it is rolled back if the server is still unreachable after") {
			t.Errorf("a tick before the deadline: exit %d; it must wait", res.ExitCode)
		}
		if got := switches(); len(got) != 1 || h.Current(t) != v2.Built {
			t.Errorf("a tick before the deadline switched: %q, current %s", got, h.Current(t))
		}
		// The deadline is a known instant: wait for it to pass.
		time.Sleep(time.Until(s.Switch.ConfirmBy) + 100*time.Millisecond)
		res = h.Run(t)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "rolled back to "+v1.Built) || !strings.Contains(res.Output(), "waits in") {
		t.Fatalf("the tick after the deadline, server down: exit %d; it must roll back and queue the report", res.ExitCode)
	}
	want := []string{v2.Built + " switch", v1.Built + " switch"}
	if got := switches(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches %q, want %q", got, want)
	}
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built {
		t.Errorf("after the rollback: profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v1.Built)
	}
	if st := h.Status(t); st.AttemptedVersion == v2.Version {
		t.Fatal("a report reached the stopped server")
	}

	e.SSHD.Restart(t)
	res = h.Run(t)
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.RollbackReason != "server-unreachable" || st.AttemptedVersion != v2.Version ||
		st.AppliedVersion != v1.Version || st.CurrentSystem != v1.Built || st.Attempts != 1 || !strings.Contains(st.Error, "not confirmed") {
		t.Errorf("the delivered report: %+v", st)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "next retry after") || len(switches()) != 2 {
		t.Errorf("the rolled-back version was not left to its retry: exit %d, switches %q", res.ExitCode, switches())
	}
	if n := logsOf(t, h, v2.Version); n != 1 {
		t.Errorf("%d logs for version %s, want 1 (one attempt)", n, v2.Version)
	}
}

// Killed -9 while rolling back a failed activation: the rollback's
// switch-to-configuration (its own process group) finishes on its own, so
// the machine is back on the old system with nothing recorded. The next
// tick records the rollback from the journal and does not switch to the
// bad system again, now or on the tick after.
func TestKilledDuringTheRollbackDoesNotSwitchToTheBadSystemAgain(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailSwitch = "2", true })
	v2 := e.Publish(t)["alpha"]
	fifo := newStepFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	if got := fifo.step(t); len(got) != 1 || got[0] != v2.Built+" switch" {
		t.Fatalf("first switch %q, want the failing %s", got, v2.Built)
	}
	run.WaitFor(t, "rolling back to "+v1.Built)
	// The rollback's switch-to-configuration waits on its record.
	waitProcs(t, fifo.mark, func(n int) bool { return n > 0 })
	killConfirmed(t, run)
	if s := readAgentState(t, h); s.Switch == nil || s.Switch.Phase != "rolling-back" {
		t.Fatalf("state after a kill during the rollback: %+v", s)
	}
	if got := fifo.step(t); len(got) != 1 || got[0] != v1.Built+" switch" {
		t.Fatalf("the orphaned rollback recorded %q", got)
	}
	waitProcs(t, fifo.mark, func(n int) bool { return n == 0 })
	switches := fifo.drain(t)
	if h.Current(t) != v1.Built || h.ProfileTarget(t) != v1.Built {
		t.Fatalf("the orphaned rollback did not finish: profile %s, current %s", h.ProfileTarget(t), h.Current(t))
	}

	res := h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "the agent stopped while rolling back") {
		t.Errorf("the tick after the kill: exit %d; it must settle the rollback", res.ExitCode)
	}
	if got := switches(); len(got) != 0 {
		t.Errorf("the tick after the kill switched %q; the machine was already back on %s", got, v1.Built)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.AttemptedVersion != v2.Version || st.AppliedVersion != v1.Version ||
		st.CurrentSystem != v1.Built || st.Attempts != 1 || st.NextRetry == nil {
		t.Errorf("status after the settled rollback: %+v", st)
	}
	res = h.Run(t)
	if !strings.Contains(res.Output(), "next retry after") || len(switches()) != 0 {
		t.Errorf("the bad version was tried again before its retry: switches %q", switches())
	}
	if n := logsOf(t, h, v2.Version); n != 1 {
		t.Errorf("%d logs for version %s, want 1 (one attempt)", n, v2.Version)
	}
}

// Killed -9 in the report phase, after a rollback: the outcome is on disk
// (state saved, report queued) while the network holds the delivery. The
// next tick delivers that report once, with one log for the attempt, and
// does not repeat the attempt.
func TestKilledInTheReportPhaseDeliversOnceAndDoesNotRepeat(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailSwitch = "2", true })
	v2 := e.Publish(t)["alpha"]
	before := h.Status(t)
	p := startGatedProxy(t, e.SSHD.Port)
	h.Settings["port"] = p.port()

	run := h.Start(t)
	// From the switch on the network forwards nothing: a failed switch
	// and its rollback need no server, the report does.
	run.WaitFor(t, "switch-to-configuration switch")
	p.hold()
	run.WaitFor(t, "rolled back to "+v1.Built)
	waitFor(t, "the rollback's outcome saved and its report queued", func() bool {
		s := readAgentState(t, h)
		return !s.Attempt.Running && s.Attempt.Result == manifest.ResultRolledBack && s.Switch == nil &&
			queuedFor(t, h, v2.Version) == 1
	})
	killConfirmed(t, run)
	if st := h.Status(t); st.FinishedAt != before.FinishedAt {
		t.Fatalf("the report reached the server through a held network: %+v", st)
	}
	p.release()
	delete(h.Settings, "port")

	res := h.Run(t)
	if !strings.Contains(res.Output(), "delivered 1 report(s)") || strings.Contains(res.Output(), "switching to") {
		t.Errorf("the tick after the kill must deliver the queued report and not switch (exit %d)", res.ExitCode)
	}
	want := []string{v1.Built + " switch", v2.Built + " switch", v1.Built + " switch"}
	if got := h.Switches(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches %q, want %q", got, want)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.RollbackReason != "activation-failed" || st.AttemptedVersion != v2.Version ||
		st.AppliedVersion != v1.Version || st.Attempts != 1 {
		t.Errorf("the delivered report: %+v", st)
	}
	if n := logsOf(t, h, v2.Version); n != 1 {
		t.Errorf("%d logs for version %s, want 1 (one attempt)", n, v2.Version)
	}
	if n := queuedFor(t, h, v2.Version); n != 0 {
		t.Errorf("%d reports of %s still queued after delivery", n, v2.Version)
	}
}

// The state directory's filesystem is 100% full (a small tmpfs): the host
// does not go silent. The report says "disk full: <path>", bento status
// shows it, and once there is room again the publication is applied.
func TestFullStateDiskIsReported(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	v1 := e.Publish(t)["alpha"]
	h := e.Host(t, "alpha")
	mountTmpfs(t, h.StateDir, "4m")
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("first tick: exit %d", res.ExitCode)
	}
	filler := fillDisk(t, h.StateDir)

	for _, tc := range []struct {
		name    string
		publish bool
	}{
		{"nothing new", false},
		{"a new publication", true},
	} {
		if tc.publish {
			e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
			e.Publish(t)
		}
		res := h.Run(t)
		st := h.Status(t)
		if st == nil || !strings.Contains(st.Error, "disk full: "+h.StateDir) || st.FinishedAt.Before(time.Now().Add(-time.Minute)) {
			t.Errorf("%s, disk full: exit %d, status %+v; want a fresh report naming disk full: %s", tc.name, res.ExitCode, st, h.StateDir)
			continue
		}
		if h.Current(t) != v1.Built {
			t.Errorf("%s: current %s, want the old %s", tc.name, h.Current(t), v1.Built)
		}
		out := bentoStatus(t, e, "alpha")
		if !strings.Contains(out, "disk full") {
			t.Errorf("%s: bento status does not show the full disk:\n%s", tc.name, out)
		}
	}

	os.Remove(filler)
	res := h.Run(t)
	v2 := e.Manifest(t, "alpha")
	if st := h.Status(t); res.ExitCode != 0 || st.AppliedVersion != v2.Version || st.Error != "" || h.Current(t) != v2.ExpectedToplevel {
		t.Errorf("with room again: exit %d, status %+v", res.ExitCode, st)
	}
}

// Killed -9 during the build on every tick (a build that runs out of
// memory each time): the first interruption is re-run at once, the second
// makes the attempt wait for its retry, and that is reported: the server
// does not go on showing the host as silently pending.
func TestRepeatedKillsDuringTheBuildAreReported(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	started, release := holdNixBuild(t, h)
	for i := 1; i <= 2; i++ {
		run := h.Start(t)
		waitFor(t, "nix build held", func() bool { _, err := os.Stat(started); return err == nil })
		killConfirmed(t, run)
		// The orphaned nix goes on (and builds nothing new).
		release()
		if s := readAgentState(t, h); !s.Attempt.Running || s.Attempt.Count != i {
			t.Fatalf("state after kill %d: %+v", i, s)
		}
	}
	res := h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "will retry version "+v2.Version) || strings.Contains(res.Output(), "building") {
		t.Errorf("after two interrupted attempts: exit %d; the third tick must wait for the retry", res.ExitCode)
	}
	st := h.Status(t)
	if st.AttemptedVersion != v2.Version || st.Result != manifest.ResultFailure || st.Attempts != 2 || st.NextRetry == nil ||
		!strings.Contains(st.Error, "interrupted") || st.AppliedVersion != v1.Version || st.CurrentSystem != v1.Built {
		t.Errorf("the report after two interrupted attempts: %+v", st)
	}
	if n := logsOf(t, h, v2.Version); n != 1 {
		t.Errorf("%d logs for %s, want 1 (the report of the interruptions)", n, v2.Version)
	}
	// Reported once: the tick after waits without a new report.
	before := h.Status(t)
	h.Run(t)
	if st := h.Status(t); st.FinishedAt != before.FinishedAt {
		t.Errorf("the interruption was reported again: %+v", st)
	}
	if h.Current(t) != v1.Built || len(h.Switches(t)) != 1 {
		t.Errorf("current %s, switches %q", h.Current(t), h.Switches(t))
	}
}

// The state disk fills up while the new system builds: the switch journal
// cannot be saved, so the switch is not made (a switch nobody could roll
// back after a crash), and the failure is reported naming the full disk.
// A nix stand-in holds "nix build" until the disk is full.
func TestFullStateDiskBeforeTheSwitchSkipsIt(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	v1 := e.Publish(t)["alpha"]
	h := e.Host(t, "alpha")
	mountTmpfs(t, h.StateDir, "4m")
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("first tick: exit %d", res.ExitCode)
	}
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	started, release := holdNixBuild(t, h)

	run := h.Start(t)
	waitFor(t, "nix build held", func() bool { _, err := os.Stat(started); return err == nil })
	filler := fillDisk(t, h.StateDir)
	defer os.Remove(filler)
	release()
	res := run.Wait(t)
	if res.ExitCode == 0 {
		t.Error("a switch that could not be recorded exited 0")
	}
	if sw := h.Switches(t); len(sw) != 1 || h.Current(t) != v1.Built || h.ProfileTarget(t) != v1.Built {
		t.Errorf("switches %q, current %s, profile %s: the switch was made without its journal", sw, h.Current(t), h.ProfileTarget(t))
	}
	st := h.Status(t)
	if st.AttemptedVersion != v2.Version || st.Result != manifest.ResultFailure || st.AppliedVersion != v1.Version ||
		!strings.Contains(st.Error, "cannot be recorded before it is made") || !strings.Contains(st.Error, "disk full: "+h.StateDir) {
		t.Errorf("report when the journal cannot be saved: %+v", st)
	}
	if out := bentoStatus(t, e, "alpha"); !strings.Contains(out, "disk full") {
		t.Errorf("bento status does not show the full disk:\n%s", out)
	}
}

// holdNixBuild points the agent at a nix stand-in that runs the real nix,
// except that "nix build" first touches started and waits for release
// (which removes started again, for the next build).
func holdNixBuild(t testing.TB, h *Host) (started string, release func()) {
	t.Helper()
	dir := filepath.Join(h.Dir, "nix-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	real, err := exec.LookPath("nix")
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"nix-env", "nix-store"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	fifo := filepath.Join(dir, "release")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	started = filepath.Join(dir, "build-started")
	script := "#!/bin/sh\nif [ \"$1\" = build ]; then : > " + started + "; read x < " + fifo + "; fi\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "nix"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	h.Env = append(h.Env, "BENTO_NIX="+filepath.Join(dir, "nix"))
	release = func() {
		// Blocks until the held nix opens its end: one build per call.
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.Write([]byte("go\n"))
		f.Close()
		os.Remove(started)
	}
	t.Cleanup(func() {
		// A test that failed before releasing must not leave nix waiting.
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Write([]byte("go\n"))
			f.Close()
		}
	})
	return started, release
}

// State files from a bad day: state.json a symlink to /dev/zero, a garbage
// pending-reboot.json and last-report.json. Each is moved aside, named
// once in the report, and the agent carries on: the running publication
// is recognised without switching again, and the tick after is clean.
func TestDamagedStateFilesAreMovedAsideAndReportedOnce(t *testing.T) {
	_, h, v1 := applied(t, hostsFleet("alpha"))
	state := filepath.Join(h.StateDir, "state.json")
	pending := filepath.Join(h.StateDir, "pending-reboot.json")
	os.Remove(state)
	if err := os.Symlink("/dev/zero", state); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pending, []byte("\x00\x01garbage{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.StateDir, "last-report.json"), []byte("[[[["), 0o644); err != nil {
		t.Fatal(err)
	}

	res := h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("exit %d with damaged state files; the agent must carry on", res.ExitCode)
	}
	if sw := h.Switches(t); len(sw) != 1 {
		t.Errorf("switches %q: the running system was switched to again", sw)
	}
	st := h.Status(t)
	if st.AppliedVersion != v1.Version || st.Result != manifest.ResultSuccess || st.CurrentSystem != v1.Built ||
		!strings.Contains(st.Error, "damaged state") || !strings.Contains(st.Error, state) || !strings.Contains(st.Error, pending) {
		t.Errorf("report after damaged state files: %+v", st)
	}
	for _, p := range []string{state, pending} {
		aside, _ := filepath.Glob(p + ".corrupt-*")
		if len(aside) != 1 {
			t.Errorf("%s moved aside as %q, want one %s.corrupt-<time>", p, aside, filepath.Base(p))
		}
		if fi, err := os.Lstat(p); err == nil && !fi.Mode().IsRegular() {
			t.Errorf("%s is still a %s", p, fi.Mode().Type())
		}
	}
	if fi, err := os.Lstat(state); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("state.json not rewritten as a regular file: %v", err)
	}

	// Reported once: the next tick finds nothing damaged.
	res = h.Run(t)
	if st := h.Status(t); res.ExitCode != 0 || st.Error != "" || st.Result != manifest.ResultUnchanged {
		t.Errorf("the tick after: exit %d, status %+v", res.ExitCode, st)
	}
}

// A garbage secrets/installed.json (issue 13: it warned forever) is moved
// aside, named once in the report, and healed: the secret stays installed
// and the next tick is clean.
func TestDamagedSecretsStateHeals(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	h := e.Host(t, "alpha")
	target := filepath.Join(h.Dir, "run", "bento-secrets", "db")
	h.Settings["restartCommand"] = []string{"/bin/true"}
	h.Settings["secrets"] = map[string]any{"db": map[string]any{"path": target, "owner": "nobody", "mode": "0400"}}
	db := randomSecret("db")
	writeSecret(t, e, "alpha", "db", db)
	e.Publish(t)
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	installed := filepath.Join(h.StateDir, "secrets", "installed.json")
	if err := os.WriteFile(installed, []byte("{\"db\": [garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Remove(target)

	res := h.Run(t)
	st := h.Status(t)
	if res.ExitCode != 0 || st.Result != manifest.ResultUnchanged || len(st.SecretErrors) != 0 ||
		!strings.Contains(st.Error, "damaged state") || !strings.Contains(st.Error, installed) {
		t.Errorf("idle tick with a damaged secrets state: exit %d, report %+v", res.ExitCode, st)
	}
	checkSecret(t, target, db, 0o400, 65534)
	if aside, _ := filepath.Glob(installed + ".corrupt-*"); len(aside) != 1 {
		t.Errorf("moved aside: %q", aside)
	}
	res = h.Run(t)
	if st := h.Status(t); res.ExitCode != 0 || st.Error != "" || len(st.SecretErrors) != 0 || strings.Contains(res.Output(), "warning") {
		t.Errorf("the tick after: exit %d, report %+v", res.ExitCode, st)
	}
}

// The identity file: missing or not a file is a configuration error (exit
// 2) that names the option, not a connection failure; readable by group or
// others is a warning, and the tick goes on.
func TestIdentityFileChecks(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.Publish(t)
	h := e.Host(t, "alpha")
	key, err := os.ReadFile(h.SSH.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(h.Dir, "key-0644")
	if err := os.WriteFile(open, key, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o644)
	for _, tc := range []struct {
		name, file string
		exit       int
		says       string
	}{
		{"missing", filepath.Join(h.Dir, "no-such-key"), 2, "identityFile " + filepath.Join(h.Dir, "no-such-key") + " does not exist"},
		{"a directory", h.Dir, 2, "is not a regular file"},
		{"readable by others", open, 0, "readable by group or others (mode 0644): chmod 600 " + open},
	} {
		h.Settings["identityFile"] = tc.file
		res := h.Run(t)
		if res.ExitCode != tc.exit || !strings.Contains(res.Output(), tc.says) {
			t.Errorf("%s: exit %d, want %d saying %q", tc.name, res.ExitCode, tc.exit, tc.says)
		}
		if st := h.Status(t); (st != nil) != (tc.exit == 0) {
			t.Errorf("%s: report %+v", tc.name, st)
		}
	}
}

// Numbers in the agent's configuration are bounded, end to end: an
// overflowing or out-of-range value is a configuration error (exit 2) whose
// message names the key and the range, never a negative duration or a
// retry loop that does not end.
func TestOutOfRangeConfigurationExits2(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	h := e.Host(t, "alpha")
	for _, tc := range []struct {
		key  string
		v    any
		says string
	}{
		{"confirmTimeout", 1e300, `"confirmTimeout": 1e+300 is too long a duration`},
		{"confirmTimeout", "0s", "confirmTimeout 0 is out of range: it must be from 1s to 1d"},
		{"retry", map[string]any{"initialDelay": "1m", "maxDelay": "1e10"}, `"1e10" is not a duration`},
		{"retry", map[string]any{"initialDelay": "1m", "maxDelay": "31d"}, "retry.maxDelay 31d is out of range: it must be from 0 to 30d"},
		{"connectAttempts", 1e9, "connectAttempts 1000000000 is out of range: it must be from 1 to 100"},
	} {
		h.Settings = map[string]any{tc.key: tc.v}
		res := h.Run(t)
		if res.ExitCode != 2 || !strings.Contains(res.Output(), tc.says) {
			t.Errorf("%s = %v: exit %d, want 2 saying %q", tc.key, tc.v, res.ExitCode, tc.says)
		}
	}
	if h.Status(t) != nil {
		t.Error("a report was written with an invalid configuration")
	}
}

// agentState is the part of the agent's state.json the tests look at.
type agentState struct {
	AppliedVersion string `json:"appliedVersion"`
	AppliedSystem  string `json:"appliedSystem"`
	Attempt        struct {
		Version string          `json:"version"`
		Count   int             `json:"count"`
		Running bool            `json:"running"`
		Result  manifest.Result `json:"result"`
	} `json:"attempt"`
	Switch *struct {
		Version   string    `json:"version"`
		To        string    `json:"to"`
		From      string    `json:"from"`
		ConfirmBy time.Time `json:"confirmBy"`
		Phase     string    `json:"phase"`
	} `json:"switch"`
}

func readAgentState(t testing.TB, h *Host) agentState {
	t.Helper()
	var s agentState
	data, err := os.ReadFile(filepath.Join(h.StateDir, "state.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return s
		}
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("e2e: state.json: %v\n%s", err, data)
	}
	return s
}

// killConfirmed kills the tick with SIGKILL and fails the test unless
// that signal is what ended it (the tick was still running).
func killConfirmed(t testing.TB, r *Running) {
	t.Helper()
	if !r.killWhileRunning() {
		t.Fatalf("e2e: the tick ended before the kill:\n%s", indent(r.Output()))
	}
}

// killWhileRunning sends SIGKILL and reports whether it ended the tick.
func (r *Running) killWhileRunning() bool {
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	ws, ok := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// waitFor polls cond (local files) until it holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("e2e: %s: not after a minute", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logsOf counts the uploaded logs of a version.
func logsOf(t testing.TB, h *Host, version string) int {
	n := 0
	for _, l := range h.Logs(t) {
		if strings.HasPrefix(l, version+"-") {
			n++
		}
	}
	return n
}

// queuedFor counts the queued reports whose attempt is version.
func queuedFor(t testing.TB, h *Host, version string) int {
	entries, _ := filepath.Glob(filepath.Join(h.StateDir, "queue", "*.json"))
	n := 0
	for _, p := range entries {
		var e struct {
			Report manifest.Report `json:"report"`
		}
		data, err := os.ReadFile(p)
		if err == nil && json.Unmarshal(data, &e) == nil && e.Report.AttemptedVersion == version {
			n++
		}
	}
	return n
}

// stepFIFO is a switch record that lets one switch-to-configuration
// through per step: between steps nobody has the FIFO open for reading,
// so the next writer blocks in open.
type stepFIFO struct {
	path string
	mark string
}

func newStepFIFO(t testing.TB, h *Host) *stepFIFO {
	t.Helper()
	p := filepath.Join(h.Dir, "switch-fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	h.Env = append(h.Env, "BENTO_FIXTURE_RECORD="+p)
	t.Cleanup(func() {
		// Unblock any writer left (a failed test).
		if f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	})
	return &stepFIFO{path: p, mark: "BENTO_FIXTURE_RECORD=" + p}
}

// step reads what one writer writes (until it closes).
func (f *stepFIFO) step(t testing.TB) []string {
	t.Helper()
	r, err := os.Open(f.path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(data), "\n"), "\n")
}

// drain reads every later record in the background; lines returns what
// was read since.
func (f *stepFIFO) drain(t testing.TB) (lines func() []string) {
	t.Helper()
	r, err := os.OpenFile(f.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	var mu sync.Mutex
	var buf bytes.Buffer
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			mu.Lock()
			buf.Write(b[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		s := strings.TrimRight(buf.String(), "\n")
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}
}

// gatedProxy forwards TCP connections to the test sshd. hold makes it
// stop forwarding (the connections stay open: a network that hangs), and
// release lets the bytes through again.
type gatedProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cond  *sync.Cond
	held  bool
	conns []net.Conn
}

func startGatedProxy(t testing.TB, port int) *gatedProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gatedProxy{ln: ln, target: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	p.cond = sync.NewCond(&p.mu)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *gatedProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *gatedProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go p.pipe(s, c)
		go p.pipe(c, s)
	}
}

func (p *gatedProxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	b := make([]byte, 32<<10)
	for {
		n, err := src.Read(b)
		if n > 0 {
			p.mu.Lock()
			for p.held {
				p.cond.Wait()
			}
			p.mu.Unlock()
			if _, werr := dst.Write(b[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *gatedProxy) hold() {
	p.mu.Lock()
	p.held = true
	p.mu.Unlock()
}

func (p *gatedProxy) release() {
	p.mu.Lock()
	p.held = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *gatedProxy) close() {
	p.ln.Close()
	p.release()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

// mountTmpfs mounts a tmpfs of size at dir for the test.
func mountTmpfs(t testing.TB, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs for the full-disk test (needs root and CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
}

// fillDisk writes a file in dir until its filesystem is full and returns
// the file's path.
func fillDisk(t testing.TB, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// The last bytes a smaller write still gets.
	for _, n := range []int{4096, 512, 1} {
		for {
			if _, err := f.Write(chunk[:n]); err != nil {
				break
			}
		}
	}
	f.Sync()
	return p
}

// bentoStatus runs bento status for the chroots without evaluating the
// fleet and returns its output.
func bentoStatus(t testing.TB, e *Env, hosts ...string) string {
	t.Helper()
	args := append([]string{"status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root}, hosts...)
	cmd := exec.Command(Bento(t), args...)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	out, _ := cmd.CombinedOutput()
	return string(out)
}
