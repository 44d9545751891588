package status_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/status"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.RemoveBinary()
	os.Exit(code)
}

// bento runs the bento binary and returns stdout, stderr and exit status.
func bento(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e2e.Bento(t), args...)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// TestStatesProducedByRealAgents publishes a fixture fleet into a real
// sshd's chroots, runs the real agent for each host through good,
// failing, rolling-back, kernel-changing and drifting updates, and checks
// what bento status --json says about each.
func TestStatesProducedByRealAgents(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a real sshd with per-host chroot users")
	}
	names := []string{"good", "broken", "flaky", "kernel", "slow", "ghost", "drifter"}
	var f fixture.Fleet
	for _, n := range names {
		f.Hosts = append(f.Hosts, fixture.Host{Name: n, Bento: &fixture.Bento{Enable: true}, FailBuild: n == "broken"})
	}
	f.Hosts[0].Bento.Interval = "hourly"
	e := e2e.Start(t, f)
	pub := e.Publish(t)
	for _, n := range []string{"good", "broken", "flaky", "kernel", "slow", "drifter"} {
		res := e.Host(t, n).Run(t)
		if (res.ExitCode == 0) != (n != "broken") {
			t.Fatalf("%s: first tick exit %d", n, res.ExitCode)
		}
	}
	e.Host(t, "kernel").Boot(t)
	e.Update(t, "flaky", func(h *fixture.Host) { h.Generation, h.FailSwitch = "2", true })
	e.Update(t, "kernel", func(h *fixture.Host) { h.Generation, h.Kernel = "2", "2" })
	e.Update(t, "slow", func(h *fixture.Host) { h.Generation = "2" })
	e.Publish(t, "flaky", "kernel", "slow")
	if res := e.Host(t, "flaky").Run(t); res.ExitCode == 0 {
		t.Fatal("flaky: a failed activation exited 0")
	}
	if res := e.Host(t, "kernel").Run(t); res.ExitCode != 0 {
		t.Fatalf("kernel: exit %d", res.ExitCode)
	}
	// Someone switches drifter to another system by hand; its next (idle)
	// tick reports what it runs.
	d := e.Host(t, "drifter")
	os.Remove(d.CurrentSystem)
	if err := os.Symlink(pub["good"].Built, d.CurrentSystem); err != nil {
		t.Fatal(err)
	}
	if res := d.Run(t); res.ExitCode != 0 {
		t.Fatalf("drifter: idle tick exit %d", res.ExitCode)
	}

	root := e.SSHD.Root
	state := t.TempDir()
	stdout, stderr, code := bento(t, "status", "--json", "--flake", e.FleetDir, "--chroot-root", root, "--state-dir", state)
	var s status.Snapshot
	if err := json.Unmarshal([]byte(stdout), &s); err != nil {
		t.Fatalf("status --json: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	want := map[string]struct {
		state status.State
		msg   string
	}{
		"good":    {status.UpToDate, ""},
		"broken":  {status.Failing, "build: error: builder for '/nix/store/"},
		"flaky":   {status.RolledBack, "rolled back: activation failed"},
		"kernel":  {status.RebootRequired, ""},
		"slow":    {status.Pending, "not seen yet"},
		"ghost":   {status.NeverSeen, "no report yet"},
		"drifter": {status.Drift, "bento diff drifter"},
	}
	rows := map[string]status.Row{}
	for _, r := range s.Hosts {
		rows[r.Host] = r
	}
	for h, w := range want {
		r := rows[h]
		if r.State != w.state || !strings.Contains(r.Message, w.msg) {
			t.Errorf("%s: %s %q, want %s %q", h, r.State, r.Message, w.state, w.msg)
		}
		if strings.Contains(r.Message, "nix build") || strings.Contains(r.Message, "path:/") {
			t.Errorf("%s: the message quotes the command line: %q", h, r.Message)
		}
	}
	if len(rows) != len(want) || code != status.ExitFailing || s.ExitCode != status.ExitFailing {
		t.Errorf("exit %d (document %d), hosts %d; want %d, %d\n%s", code, s.ExitCode, len(rows), status.ExitFailing, len(want), stderr)
	}
	if r := rows["good"]; r.SystemMatch == nil || !*r.SystemMatch || r.System != pub["good"].Built {
		t.Errorf("good: system %s match %v, want %s", r.System, r.SystemMatch, pub["good"].Built)
	}

	// The human table says the same, one line per host and a summary.
	stdout, _, code = bento(t, "status", "--flake", e.FleetDir, "--chroot-root", root, "--state-dir", state)
	if code != status.ExitFailing || !strings.Contains(stdout, "7 hosts: 1 failing, 1 rolled-back, 1 drift, 1 never-seen, 1 pending, 1 reboot-required, 1 up-to-date") {
		t.Errorf("table: exit %d\n%s", code, stdout)
	}

	// Without the flake, the poll interval comes from the manifest.
	stdout, _, _ = bento(t, "status", "--no-eval", "--json", "--chroot-root", root, "good")
	if !strings.Contains(stdout, `"staleAfterSeconds": 10800`) {
		t.Errorf("--no-eval: good's threshold is not 3 hourly polls:\n%s", stdout)
	}

	// Without the flake, and judged stale with a tiny threshold: the
	// healthy host's real report is old by then.
	stdout, _, code = bento(t, "status", "--no-eval", "--chroot-root", root, "--stale-after", "1ms", "good")
	if code != status.ExitSilent || !strings.Contains(stdout, "stale") {
		t.Errorf("--stale-after 1ms: exit %d\n%s", code, stdout)
	}

	// A host taken out of the flake keeps its chroot: removed-from-flake.
	if err := os.RemoveAll(filepath.Join(e.FleetDir, "hosts", "ghost")); err != nil {
		t.Fatal(err)
	}
	stdout, _, _ = bento(t, "status", "--flake", e.FleetDir, "--chroot-root", root, "--state-dir", state, "ghost")
	if !strings.Contains(stdout, "removed-from-flake") {
		t.Errorf("ghost after removal from the flake:\n%s", stdout)
	}

	// The failing host's uploaded log, decompressed.
	stdout, stderr, code = bento(t, "logs", "--chroot-root", root, "broken")
	if code != 0 || !strings.Contains(stdout, "fails on purpose") {
		t.Errorf("logs broken: exit %d\n%s\n%s", code, stdout, stderr)
	}
	// What drifter runs against what the server built for it.
	stdout, stderr, code = bento(t, "diff", "--chroot-root", root, "--state-dir", state, "drifter")
	if code != 0 || !strings.Contains(stdout, "nixos-system-good") || !strings.Contains(stdout, "nixos-system-drifter") {
		t.Errorf("diff drifter: exit %d\n%s\n%s", code, stdout, stderr)
	}
}
