package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/status"
)

// historyEvents runs bento history --json and returns its events.
func historyEvents(t *testing.T, e *Env, args ...string) []history.Event {
	t.Helper()
	res, _ := serverBento(t, e, nil, append([]string{"history", "--json", "--chroot-root", e.SSHD.Root}, args...)...)
	if res.ExitCode != 0 {
		t.Fatalf("bento history: exit %d\n%s", res.ExitCode, res.Output())
	}
	var doc struct {
		Events []history.Event `json:"events"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &doc); err != nil {
		t.Fatalf("bento history --json: %v\n%s", err, res.Stdout)
	}
	return doc.Events
}

func eventLine(evs []history.Event) string {
	var parts []string
	for _, ev := range evs {
		s := ev.Host + " " + ev.Kind + " " + status.ShortVersion(ev.Version)
		if ev.State != "" {
			s += " " + ev.State
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// TestHistoryOfADeployAndReports: bento deploy records its publication,
// bento status the host's reports once each however often it reads them,
// and bento history shows published → up-to-date for each version.
func TestHistoryOfADeployAndReports(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	v1 := e.Publish(t)["alpha"].Version
	stateDir := t.TempDir()
	statusJSON := func() status.Snapshot {
		t.Helper()
		res, _ := serverBento(t, e, nil, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir)
		var s status.Snapshot
		if err := json.Unmarshal([]byte(res.Stdout), &s); err != nil {
			t.Fatalf("status --json: %v\n%s", err, res.Output())
		}
		if strings.Contains(res.Stderr, "history") {
			t.Errorf("status warned about the history:\n%s", res.Stderr)
		}
		return s
	}
	statusJSON() // alpha never seen: nothing to record

	alpha := e.Host(t, "alpha")
	if res := alpha.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	statusJSON()
	s := statusJSON() // the same report again
	if s.HistoryBytes <= 0 {
		t.Errorf("status --json historyBytes = %d, want the database's size", s.HistoryBytes)
	}
	if got, want := eventLine(historyEvents(t, e, "alpha")), "alpha published "+v1[:8]+", alpha report "+v1[:8]+" up-to-date"; got != want {
		t.Fatalf("history after one deploy and two status runs:\n got %s\nwant %s", got, want)
	}

	// A second version: published, then pending (no new event: the report
	// did not change), then applied.
	e.Update(t, "alpha", func(h *fixture.Host) { h.Generation = "2" })
	v2 := e.Publish(t, "alpha")["alpha"].Version
	statusJSON()
	if res := alpha.Run(t); res.ExitCode != 0 {
		t.Fatalf("second tick: exit %d", res.ExitCode)
	}
	statusJSON()
	want := "alpha published " + v1[:8] + ", alpha report " + v1[:8] + " up-to-date, alpha published " + v2[:8] + ", alpha report " + v2[:8] + " up-to-date"
	if got := eventLine(historyEvents(t, e, "alpha")); got != want {
		t.Fatalf("history after the second version:\n got %s\nwant %s", got, want)
	}
	// The fleet's timeline has beta's publication too; a glob selects.
	if got := eventLine(historyEvents(t, e, "b*")); !strings.HasPrefix(got, "beta published ") || strings.Contains(got, "alpha") {
		t.Errorf("history b*: %s", got)
	}

	res, _ := serverBento(t, e, nil, "history", "--chroot-root", e.SSHD.Root, "alpha")
	for _, line := range []string{"published " + v1[:8], "up-to-date " + v1[:8], "published " + v2[:8], "up-to-date " + v2[:8]} {
		if !strings.Contains(res.Stdout, line) {
			t.Errorf("bento history alpha lacks %q:\n%s", line, res.Stdout)
		}
	}

	// The report removed by hand is recorded as gone, once.
	if err := os.Remove(filepath.Join(e.Chroot("alpha"), "reports", "status.json")); err != nil {
		t.Fatal(err)
	}
	statusJSON()
	statusJSON()
	evs := historyEvents(t, e, "alpha")
	if last := evs[len(evs)-1]; len(evs) != 5 || last.Kind != history.KindReportGone || last.State != string(status.NeverSeen) {
		t.Errorf("after the report went: %s", eventLine(evs))
	}
}

// TestStatusWithAReadOnlyHistory: a state directory status cannot write
// (a read-only mount) costs one warning; status shows the fleet as ever,
// and bento history still reads what is there.
func TestStatusWithAReadOnlyHistory(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	v1 := e.Publish(t)["alpha"].Version
	alpha := e.Host(t, "alpha")
	if res := alpha.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	state := filepath.Join(e.SSHD.Root, publish.StateDir)
	if err := syscall.Mount(state, state, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount %s (needs root and CAP_SYS_ADMIN): %v", state, err)
	}
	t.Cleanup(func() { syscall.Unmount(state, syscall.MNT_DETACH) })
	if err := syscall.Mount("", state, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	res, _ := serverBento(t, e, nil, "status", "--no-eval", "--chroot-root", e.SSHD.Root, "--state-dir", t.TempDir())
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "up-to-date") {
		t.Fatalf("status with a read-only history: exit %d\n%s", res.ExitCode, res.Output())
	}
	if n := strings.Count(res.Stderr, "warning: history"); n != 1 || !strings.Contains(res.Stderr, "status goes on without recording") {
		t.Errorf("want one warning about the history, got %d:\n%s", n, res.Stderr)
	}
	if got, want := eventLine(historyEvents(t, e, "alpha")), "alpha published "+v1[:8]; got != want {
		t.Errorf("history from a read-only state directory: got %s, want %s", got, want)
	}
	res, _ = serverBento(t, e, nil, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", t.TempDir())
	var snap status.Snapshot
	if err := json.Unmarshal([]byte(res.Stdout), &snap); err != nil || snap.HistoryBytes <= 0 {
		t.Errorf("status --json with a read-only history: historyBytes %d, %v", snap.HistoryBytes, err)
	}
}

// TestHistoryOfAHealthCheckRollback: "rolled back …: health-check web",
// the failing check by name, in bento history after bento status read
// the host's report.
func TestHistoryOfAHealthCheckRollback(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	statusTable(t, e)
	m := newHealthMarks(t, h)
	healthSettings(h, m, false)
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation = "2" })
	v2 := e.Publish(t)["alpha"]
	m.set(t, "bad", v2.Built)
	if res := h.Run(t); res.ExitCode != 1 {
		t.Fatalf("a health-check rollback exited %d, want 1", res.ExitCode)
	}
	statusTable(t, e)
	evs := historyEvents(t, e, "alpha")
	want := "alpha published " + v1.Version[:8] + ", alpha report " + v1.Version[:8] + " up-to-date, alpha published " + v2.Version[:8] + ", alpha report " + v2.Version[:8] + " rolled-back"
	if got := eventLine(evs); got != want {
		t.Fatalf("history:\n got %s\nwant %s", got, want)
	}
	if last := evs[len(evs)-1]; last.Reason != "health-check web" || last.AppliedVersion != v1.Version || last.Result != "rolled-back" {
		t.Errorf("the rollback's event: %+v", last)
	}
	res, _ := serverBento(t, e, nil, "history", "--chroot-root", e.SSHD.Root, "alpha")
	if !strings.Contains(res.Stdout, "rolled back "+v2.Version[:8]+": health-check web") {
		t.Errorf("bento history alpha:\n%s", res.Stdout)
	}
}
