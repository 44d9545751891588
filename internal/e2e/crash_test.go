package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
)

func TestKillDuringDownloadLeavesAConsistentState(t *testing.T) {
	f := hostsFleet("alpha")
	f.Files = map[string]string{"modules/a.nix": "{ }\n", "modules/b.nix": "{ b = 1; }\n", "modules/c.nix": "{ c = 1; }\n"}
	e, h, v1 := applied(t, f)
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	e.Fleet.Files["modules/b.nix"] = "{ b = 2; }\n"
	e.Fleet.Files["modules/c.nix"] = "{ c = 2; }\n"
	e.WriteFleet(t, e.Fleet)
	v2 := e.Publish(t)["alpha"]

	// One file of the new version becomes a FIFO on the server: the SFTP
	// server blocks opening it, so the download stops half-way, for as
	// long as the test wants.
	blocked := e.PublishedFile(t, "alpha", "modules/c.nix")
	content, err := os.ReadFile(blocked)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(blocked), 0o755)
	os.Remove(blocked)
	if err := syscall.Mkfifo(blocked, 0o644); err != nil {
		t.Fatal(err)
	}
	run := h.Start(t)
	staging := waitForStaging(t, h, v2.Version)
	select {
	case <-run.done:
		t.Fatalf("the tick ended before the kill: the download was not blocked:\n%s", run.Output())
	default:
	}
	run.Kill(t)
	// The killed attempt is on record as running: what the next tick
	// recovers from.
	if data, err := os.ReadFile(filepath.Join(h.StateDir, "state.json")); err != nil ||
		!strings.Contains(string(data), `"running": true`) || !strings.Contains(string(data), v2.Version) {
		t.Errorf("state after kill -9 (%v):\n%s", err, data)
	}

	// Killed mid-download: the old tree and system are untouched, the new
	// version is not in place, nothing half-written is taken for real.
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built {
		t.Errorf("after kill -9: profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v1.Built)
	}
	if _, err := os.Stat(filepath.Join(h.StateDir, "config", v2.Version)); !os.IsNotExist(err) {
		t.Errorf("a half-downloaded version is in place: %v", err)
	}
	cur, _ := os.Readlink(filepath.Join(h.StateDir, "config", "current"))
	if cur != v1.Version {
		t.Errorf("current tree -> %q, want %s", cur, v1.Version)
	}

	// Unblock the server (a writer that closes at once) and put the real
	// file back, as the publisher wrote it.
	if w, err := os.OpenFile(blocked, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		w.Close()
	}
	tmp := blocked + ".real"
	os.WriteFile(tmp, content, 0o444)
	os.Rename(tmp, blocked)

	res := h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("the tick after the kill failed: exit %d", res.ExitCode)
	}
	if h.ProfileTarget(t) != v2.Built || h.Current(t) != v2.Built {
		t.Errorf("the tick after the kill did not apply %s", v2.Built)
	}
	if _, err := os.Stat(staging); !os.IsNotExist(err) {
		t.Errorf("the interrupted staging directory %s is still there", staging)
	}
	got, err := os.ReadFile(filepath.Join(h.StateDir, "config", v2.Version, "modules", "c.nix"))
	if err != nil || string(got) != string(content) {
		t.Errorf("modules/c.nix = %q, %v; want %q", got, err, content)
	}
	if st := h.Status(t); st.AppliedVersion != v2.Version || st.Attempts != 2 {
		t.Errorf("status after recovery: applied %s, attempts %d (the killed attempt counts)", st.AppliedVersion, st.Attempts)
	}
}

// waitForStaging waits until the agent has begun downloading version into
// a staging directory and returns it.
func waitForStaging(t *testing.T, h *Host, version string) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		matches, _ := filepath.Glob(filepath.Join(h.StateDir, "config", ".staging-"+version+"-*"))
		for _, m := range matches {
			if !strings.Contains(m, "-update-") {
				// Give the other downloads a moment to land beside the
				// blocked one.
				time.Sleep(200 * time.Millisecond)
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the agent never started downloading")
	return ""
}

// Killed in the middle of the switch (switch-to-configuration, in its own
// process group, finishes on its own): the next tick finds the switch journal,
// sees the new system running and the server answering, confirms it without
// switching again, and reports it applied as the same (first) attempt.
func TestKillDuringSwitchIsTakenUpByTheNextTick(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	start, switches := recordFIFO(t, h)

	run := h.Start(t)
	run.WaitFor(t, "switch-to-configuration switch")
	// switch-to-configuration runs (blocked on its record) when the agent dies.
	mark := "BENTO_FIXTURE_RECORD=" + filepath.Join(h.Dir, "switch-fifo")
	waitProcs(t, mark, func(n int) bool { return n > 0 })
	run.Kill(t)
	if h.ProfileTarget(t) != v2.Built {
		t.Errorf("profile %s: the kill came before the profile was set", h.ProfileTarget(t))
	}
	// The orphaned switch-to-configuration (its own process group) goes on
	// and makes the new system current.
	start()
	waitProcs(t, mark, func(n int) bool { return n == 0 })
	if h.Current(t) != v2.Built {
		t.Fatalf("the orphaned switch-to-configuration did not finish: current %s", h.Current(t))
	}

	res := h.Run(t)
	if res.ExitCode != 0 || !strings.Contains(res.Output(), "the agent stopped during the activation of version "+v2.Version) ||
		!strings.Contains(res.Output(), "runs and the server answers: confirmed") {
		t.Fatalf("the tick after the kill: exit %d; it must settle the interrupted activation:\n%s", res.ExitCode, res.Output())
	}
	if got := switches(); len(got) != 1 || got[0] != v2.Built+" switch" {
		t.Errorf("switches %q, want the killed tick's one only", got)
	}
	st := h.Status(t)
	if st.Result != "success" || st.AppliedVersion != v2.Version || st.Attempts != 1 || st.CurrentSystem != v2.Built {
		t.Errorf("status after recovery: %+v (v1 was %s)", st, v1.Version)
	}
}

// waitProcs waits until ok(number of switch-to-configuration processes
// whose environment holds mark) is true.
func waitProcs(t *testing.T, mark string, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		n := 0
		envs, _ := filepath.Glob("/proc/[0-9]*/environ")
		for _, f := range envs {
			data, err := os.ReadFile(f)
			if err != nil || !bytes.Contains(data, []byte(mark+"\x00")) {
				continue
			}
			if cmd, err := os.ReadFile(filepath.Join(filepath.Dir(f), "cmdline")); err == nil && bytes.Contains(cmd, []byte("/bin/switch-to-configuration\x00")) {
				n++
			}
		}
		if ok(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("e2e: %d processes with %s after a minute", n, mark)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
