package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// healthMarks makes a command health check whose verdict the test sets
// per system: it fails on a system S while the file bad-<base of S>
// exists, and blocks (reading a FIFO nobody writes) while hang-<base of S>
// exists. It prints the system it checked.
type healthMarks struct {
	dir, fifo string
}

func newHealthMarks(t *testing.T, h *Host) *healthMarks {
	t.Helper()
	m := &healthMarks{dir: filepath.Join(h.Dir, "health"), fifo: filepath.Join(h.Dir, "health", "fifo")}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(m.fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Releases a check still blocked on the FIFO (EOF once closed).
		if f, err := os.OpenFile(m.fifo, os.O_RDWR, 0); err == nil {
			f.Close()
		}
	})
	return m
}

func (m *healthMarks) command(h *Host) []string {
	script := `cur=$(readlink -f "$1"); b=$(basename "$cur"); echo "checking $b"
if [ -e "$2/hang-$b" ]; then echo hanging; echo $$ > "$2/pid"; exec cat "$3"; fi
if [ -e "$2/bad-$b" ]; then echo "unhealthy on purpose: $b" >&2; exit 1; fi
echo healthy`
	return []string{"/bin/sh", "-c", script, "check", h.CurrentSystem, m.dir, m.fifo}
}

func (m *healthMarks) set(t *testing.T, kind, system string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.dir, kind+"-"+filepath.Base(system)), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// healthSettings configures a command check "web" (the marks decide)
// and a unit check "nginx" through a stand-in for systemctl is-active.
func healthSettings(h *Host, m *healthMarks, continuous bool) {
	h.Settings["healthUnitCommand"] = []string{"/bin/sh", "-c", `echo "$1: active"`, "is-active"}
	h.Settings["healthChecks"] = map[string]any{
		"web":   map[string]any{"command": m.command(h), "timeout": "5s", "retries": 1, "interval": "0", "settle": "0", "continuous": continuous},
		"nginx": map[string]any{"unit": "nginx.service", "timeout": "5s", "retries": 0, "interval": "0", "settle": "0", "continuous": continuous},
	}
}

func statusTable(t *testing.T, e *Env) Result {
	t.Helper()
	res, _ := serverBento(t, e, nil, "status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root, "--state-dir", e.stateDir)
	return res
}

// A health check that fails after the switch rolls the host back to the
// exact previous system, checks that one too, and says so in its report
// and in bento status.
func TestHealthCheckFailureRollsBack(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	m := newHealthMarks(t, h)
	healthSettings(h, m, false)
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	m.set(t, "bad", v2.Built)

	res := h.Run(t)
	if res.ExitCode != 1 {
		t.Fatalf("a health-check rollback exited %d, want 1", res.ExitCode)
	}
	want := []string{v1.Built + " switch", v2.Built + " switch", v1.Built + " switch"}
	if got := h.Switches(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches:\n%s\nwant the new one, then the old one again:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if h.ProfileTarget(t) != v1.Built || h.Current(t) != v1.Built {
		t.Errorf("after rollback: profile %s, current %s, want %s", h.ProfileTarget(t), h.Current(t), v1.Built)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.Stage != manifest.StageRolledBack || st.RollbackReason != manifest.RollbackHealthCheck ||
		st.AppliedVersion != v1.Version || st.AttemptedVersion != v2.Version ||
		!strings.Contains(st.Error, "health check web (command) failed after 2 attempt(s)") || !strings.Contains(st.Error, "unhealthy on purpose") {
		t.Errorf("report after rollback: %+v", st)
	}
	if hl := st.Health; hl == nil || hl.OK || hl.System != v2.Built || len(hl.Checks) != 2 {
		t.Fatalf("health of the new system: %+v", hl)
	}
	if c := st.Health.Checks[1]; c.Name != "web" || c.Kind != "command" || c.OK || c.Attempts != 2 || !strings.Contains(c.Output, "unhealthy on purpose: "+filepath.Base(v2.Built)) {
		t.Errorf("failing check: %+v", c)
	}
	if c := st.Health.Checks[0]; c.Name != "nginx" || !c.OK || !strings.Contains(c.Output, "nginx.service: active") {
		t.Errorf("unit check through the stand-in: %+v", c)
	}
	if p := st.PreviousHealth; p == nil || !p.OK || p.System != v1.Built || !strings.Contains(p.Checks[1].Output, "checking "+filepath.Base(v1.Built)) {
		t.Errorf("health of the previous system: %+v", p)
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "health check web (command): attempt 2 of 2 failed") || !strings.Contains(log, "passes the health checks") {
		t.Errorf("the uploaded log does not tell the checks' story:\n%s", log)
	}

	out := statusTable(t, e)
	if out.ExitCode != 5 || !strings.Contains(out.Stdout, "rolled-back") || !strings.Contains(out.Stdout, "rolled back: health check web failed") {
		t.Errorf("bento status: exit %d\n%s", out.ExitCode, out.Output())
	}
}

// A continuous check that starts failing on a quiet tick is reported
// (bento status: up-to-date, "unhealthy: web"), and nothing rolls back.
func TestContinuousHealthCheckReportsWithoutRollback(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	m := newHealthMarks(t, h)
	healthSettings(h, m, true)
	// An HTTP check against a server on loopback, healthy until told not to be.
	var down atomic.Bool
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "backend gone", http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer site.Close()
	h.Settings["healthChecks"].(map[string]any)["site"] = map[string]any{
		"http": map[string]any{"url": site.URL + "/health", "expectStatus": 204}, "timeout": "5s", "retries": 0, "interval": "0", "settle": "0", "continuous": true}
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("quiet tick, healthy: exit %d", res.ExitCode)
	}
	if st := h.Status(t); st.Health == nil || !st.Health.OK || len(st.Health.Checks) != 3 || st.Result != manifest.ResultUnchanged {
		t.Errorf("quiet tick, healthy: %+v", st)
	}
	down.Store(true)
	m.set(t, "bad", v1.Built)
	res := h.Run(t)
	if res.ExitCode != 0 || !strings.Contains(res.Output(), "nothing is rolled back") {
		t.Errorf("quiet tick, unhealthy: exit %d (want 0: reported only)", res.ExitCode)
	}
	if got := h.Switches(t); len(got) != 1 || h.Current(t) != v1.Built {
		t.Errorf("a continuous check switched: %v", got)
	}
	st := h.Status(t)
	if st.Health == nil || st.Health.OK || st.Health.Failing().Name != "site" || st.RollbackReason != "" || st.Result != manifest.ResultUnchanged ||
		!strings.Contains(st.Health.Failing().Output, "answered 502, want 204") || !strings.Contains(st.Health.Failing().Output, "backend gone") {
		t.Errorf("quiet tick, unhealthy: %+v health %+v", st, st.Health)
	}
	out := statusTable(t, e)
	if out.ExitCode != 0 || !strings.Contains(out.Stdout, "up-to-date") || !strings.Contains(out.Stdout, "unhealthy: site, web (GET http://127.0.0.1:") {
		t.Errorf("bento status: exit %d\n%s", out.ExitCode, out.Output())
	}
	js, _ := serverBento(t, e, nil, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", e.stateDir)
	var doc struct {
		Hosts []struct {
			State  string           `json:"state"`
			Health *manifest.Health `json:"health"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(js.Stdout), &doc); err != nil || len(doc.Hosts) != 1 || doc.Hosts[0].Health == nil || doc.Hosts[0].Health.OK {
		t.Errorf("bento status --json: %v\n%s", err, js.Stdout)
	}
}

// The agent killed (SIGKILL) during the health checks leaves the guard
// armed: the next start rolls back without confirming, and the check's
// own process dies with the agent.
func TestKillDuringHealthCheckRollsBackAtNextStart(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	m := newHealthMarks(t, h)
	healthSettings(h, m, false)
	h.Settings["healthChecks"].(map[string]any)["web"].(map[string]any)["timeout"] = "10min"
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	m.set(t, "hang", v2.Built)

	run := h.Start(t)
	run.WaitFor(t, "running 2 health check(s) against "+v2.Built)
	holdFIFO(t, m.fifo)
	run.Kill(t)
	// The check's process dies with the agent (it would otherwise hang
	// on, unbounded, with nobody left to time it out).
	waitGone(t, filepath.Join(m.dir, "pid"))

	res := h.Run(t)
	if res.ExitCode != 1 {
		t.Fatalf("the start after the kill exited %d, want 1 (rolled back)", res.ExitCode)
	}
	want := []string{v1.Built + " switch", v2.Built + " switch", v1.Built + " switch"}
	if got := h.Switches(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st := h.Status(t)
	if st.Result != manifest.ResultRolledBack || st.RollbackReason != manifest.RollbackHealthCheck || st.AppliedVersion != v1.Version ||
		!strings.Contains(st.Error, "stopped during the health checks of "+v2.Built) || st.PreviousHealth == nil || !st.PreviousHealth.OK {
		t.Errorf("report after the kill: %+v", st)
	}
}

// SIGTERM during a health check does not cut the guard short: the check
// runs to its timeout, the host rolls back, reports, and only then stops.
func TestSigtermDuringHealthCheckFinishesTheGuard(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	m := newHealthMarks(t, h)
	healthSettings(h, m, false)
	web := h.Settings["healthChecks"].(map[string]any)["web"].(map[string]any)
	web["timeout"], web["retries"] = "2s", 0
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	m.set(t, "hang", v2.Built)

	run := h.Start(t)
	run.WaitFor(t, "running 2 health check(s)")
	holdFIFO(t, m.fifo)
	if err := run.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	res := run.Wait(t)
	if res.ExitCode == 0 || !strings.Contains(res.Stdout, "signal received: stopping after the activation finishes") {
		t.Errorf("exit %d", res.ExitCode)
	}
	if h.Current(t) != v1.Built || h.ProfileTarget(t) != v1.Built {
		t.Errorf("after SIGTERM during the checks: current %s, profile %s, want %s", h.Current(t), h.ProfileTarget(t), v1.Built)
	}
	st := h.Status(t)
	if st.RollbackReason != manifest.RollbackHealthCheck || !strings.Contains(st.Error, "timed out after 2s") {
		t.Errorf("report: %+v", st)
	}
}

// With operation boot the checks wait for the reboot into the new
// system; when one fails then, the host switches back to the previous
// system at once.
func TestBootOperationChecksAfterTheReboot(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	h.Boot(t)
	m := newHealthMarks(t, h)
	healthSettings(h, m, false)
	h.Settings["operation"] = "boot"
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	m.set(t, "bad", v2.Built)

	if res := h.Run(t); res.ExitCode != 0 || !strings.Contains(res.Output(), "health checks run after the reboot") {
		t.Fatalf("boot: exit %d", res.ExitCode)
	}
	if st := h.Status(t); st.Stage != manifest.StageSwitched || st.Result != manifest.ResultSuccess || st.Health != nil {
		t.Errorf("after boot, before the reboot: %+v", st)
	}
	// A quiet tick before the reboot keeps waiting.
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("quiet tick before the reboot: exit %d", res.ExitCode)
	}
	// bento agent status: waiting for the reboot is no trouble.
	cmd := exec.Command(Bento(t), "agent", "status", "--json", "--config", h.ConfigFile(t))
	cmd.Env = h.Environ()
	out, err := cmd.Output()
	var as struct {
		Unconfirmed  any `json:"unconfirmed"`
		AwaitingBoot *struct {
			To    string `json:"to"`
			Phase string `json:"phase"`
		} `json:"awaitingBoot"`
	}
	if err != nil || json.Unmarshal(out, &as) != nil || as.Unconfirmed != nil || as.AwaitingBoot == nil || as.AwaitingBoot.To != v2.Built {
		t.Errorf("bento agent status --json before the reboot: %v\n%s", err, out)
	}
	// The reboot: the machine runs and booted v2.
	os.Remove(h.CurrentSystem)
	if err := os.Symlink(v2.Built, h.CurrentSystem); err != nil {
		t.Fatal(err)
	}
	h.Boot(t)

	res := h.Run(t)
	if res.ExitCode != 1 {
		t.Fatalf("after the reboot into an unhealthy system: exit %d, want 1", res.ExitCode)
	}
	want := []string{v1.Built + " switch", v2.Built + " boot", v1.Built + " switch"}
	if got := h.Switches(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("switches:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	st := h.Status(t)
	if st.RollbackReason != manifest.RollbackHealthCheck || st.AppliedVersion != v1.Version || st.Health == nil || st.Health.System != v2.Built ||
		st.PreviousHealth == nil || !st.PreviousHealth.OK || h.Current(t) != v1.Built || h.ProfileTarget(t) != v1.Built {
		t.Errorf("after the rollback: %+v (current %s, profile %s)", st, h.Current(t), h.ProfileTarget(t))
	}
}

// holdFIFO waits until the check reads the FIFO (opening it for writing
// blocks until a reader opens it), then holds it open for writing, so the
// check stays blocked: it gets EOF only when this end is closed.
func holdFIFO(t *testing.T, fifo string) *os.File {
	t.Helper()
	opened := make(chan *os.File, 1)
	go func() {
		// A test that fails first leaves this open blocked until the
		// cleanup of newHealthMarks opens the FIFO as a reader.
		if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			opened <- f
		}
	}()
	select {
	case f := <-opened:
		t.Cleanup(func() { f.Close() })
		return f
	case <-time.After(time.Minute):
		t.Fatalf("no health check reads %s after a minute", fifo)
		return nil
	}
}

// waitGone waits until the process whose pid the file holds has ended: a
// pidfd becomes readable then (a zombie not yet reaped counts as ended).
func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(time.Minute/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("the health check's process %d outlived the agent by a minute", pid)
		}
		return
	}
}

// A host's health results are its own text: a hostile name or output
// (terminal escapes, bidi overrides, a raw C1 byte) reaches no terminal
// through bento status, in either the rollback or the unhealthy message.
func TestAttackHostileHealthOutputInStatus(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	alpha := e.Host(t, "alpha")
	e.Publish(t)
	c := e.SSHD.SFTP(t, alpha.SSH)
	version := e.Manifest(t, "alpha").Version
	hostile := &manifest.Health{System: hostileText, OK: false, Checks: []manifest.HealthCheck{
		{Name: hostileText, Kind: hostileText, Attempts: 3, Output: "output " + hostileText + "\nsecond line"},
	}}
	for _, tc := range []struct {
		name string
		edit func(*manifest.Report)
		want string
	}{
		{"rolled back", func(r *manifest.Report) {
			r.Result, r.Stage, r.RollbackReason = manifest.ResultRolledBack, manifest.StageRolledBack, manifest.RollbackHealthCheck
			r.AppliedVersion, r.Error = "", "health check failed"
			r.Health, r.PreviousHealth = hostile, hostile
		}, "the previous system fails its checks too"},
		{"unhealthy", func(r *manifest.Report) { r.Health = hostile }, "unhealthy: x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := hostReport("alpha", version)
			tc.edit(&rep)
			data, _ := json.Marshal(rep)
			data = bytes.Replace(data, []byte(`"output `), []byte("\"output \x9b2J "), 1)
			upload(t, c, "/"+manifest.StatusFile, data)
			for _, args := range [][]string{
				{"status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root, "--state-dir", e.stateDir},
				{"status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", e.stateDir},
			} {
				res, _ := serverBento(t, e, nil, args...)
				assertNoControls(t, "bento status "+args[2], res.Output())
				if args[2] == "--wide" && !strings.Contains(res.Stdout, tc.want) {
					t.Errorf("bento status does not say %q:\n%s", tc.want, res.Stdout)
				}
			}
		})
	}
}
