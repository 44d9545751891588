package activate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/testio"

	"github.com/bento-nix/bento/activate"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/nix"
)

// systems maps a fixture host name to its built toplevel; built once per
// test binary by TestMain.
var systems map[string]string

// fixtureHosts are the systems the tests move between. Hosts that differ
// only in the named part share every other boot part with "a".
func fixtureHosts() []fixture.Host {
	return []fixture.Host{
		{Name: "a"},
		{Name: "b", Generation: "2"},
		{Name: "fail", FailSwitch: true},
		{Name: "kernel", Kernel: "2"},
		{Name: "initrd", Initrd: "2"},
		{Name: "modules", Modules: "2"},
		{Name: "params", KernelParams: "quiet"},
		{Name: "kernelinitrd", Kernel: "2", Initrd: "2"},
	}
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bento-activate-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	systems, err = buildSystems(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "activate tests: building fixture systems:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildSystems(dir string) (map[string]string, error) {
	hosts := fixtureHosts()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hosts}); err != nil {
		return nil, err
	}
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	return fixture.BuildToplevels(context.Background(), &nix.Runner{Env: fixture.Env()}, dir, names...)
}

// machine is a NixOS machine in a temporary directory: a system profile,
// /run/current-system and /run/booted-system links, and the file where
// fixture systems record how switch-to-configuration was called.
type machine struct {
	act                              *activate.Activator
	log                              *bytes.Buffer
	profile, current, booted, record string
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	m := &machine{
		log:     &bytes.Buffer{},
		profile: filepath.Join(dir, "profiles", "system"),
		current: filepath.Join(dir, "run", "current-system"),
		booted:  filepath.Join(dir, "run", "booted-system"),
		record:  filepath.Join(dir, "switch-record"),
	}
	for _, d := range []string{filepath.Dir(m.current), filepath.Dir(m.profile)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m.act = &activate.Activator{
		Nix:   &nix.Runner{Env: fixture.Env()},
		Paths: activate.Paths{Profile: m.profile, CurrentSystem: m.current, BootedSystem: m.booted},
		Env:   []string{"BENTO_FIXTURE_RECORD=" + m.record, "BENTO_FIXTURE_CURRENT_SYSTEM=" + m.current},
		Log:   m.log,
	}
	return m
}

// runs makes the machine run, and boot into, system name as if installed:
// profile set, current and booted links on it, nothing recorded.
func (m *machine) runs(t *testing.T, name string) {
	t.Helper()
	if _, err := m.act.Nix.Run(context.Background(), nix.Cmd{Tool: "nix-env", Args: []string{"-p", m.profile, "--set", systems[name]}}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{m.current, m.booted} {
		os.Remove(l)
		if err := os.Symlink(systems[name], l); err != nil {
			t.Fatal(err)
		}
	}
}

func (m *machine) recorded(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(m.record)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		// "<toplevel> <args>" → "<host> <args>" for readable comparisons.
		top, args, _ := strings.Cut(l, " ")
		calls = append(calls, nameOf(top)+" "+args)
	}
	return calls
}

func nameOf(path string) string {
	for n, p := range systems {
		if p == path {
			return n
		}
	}
	return path
}

// state is what a user would look at: where the profile and
// /run/current-system point.
func (m *machine) state(t *testing.T) (profile, current string) {
	t.Helper()
	p, err := m.act.ProfileTarget()
	if err != nil {
		t.Fatal(err)
	}
	c, err := m.act.Current()
	if err != nil {
		t.Fatal(err)
	}
	return nameOf(p), nameOf(c)
}

func TestSwitch(t *testing.T) {
	tests := []struct {
		op          string
		wantProfile string
		wantCurrent string
	}{
		{op: "switch", wantProfile: "b", wantCurrent: "b"},
		{op: "boot", wantProfile: "b", wantCurrent: "a"},
		{op: "test", wantProfile: "a", wantCurrent: "b"},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			m := newMachine(t)
			m.runs(t, "a")
			out, err := m.act.Switch(context.Background(), systems["b"], tt.op)
			if err != nil {
				t.Fatalf("switch: %v\nlog:\n%s", err, m.log)
			}
			if out != activate.Switched {
				t.Errorf("outcome %q, want %q", out, activate.Switched)
			}
			profile, current := m.state(t)
			if profile != tt.wantProfile || current != tt.wantCurrent {
				t.Errorf("profile → %s, current → %s; want %s, %s", profile, current, tt.wantProfile, tt.wantCurrent)
			}
			if got, want := m.recorded(t), []string{"b " + tt.op}; !slices.Equal(got, want) {
				t.Errorf("switch-to-configuration calls %q, want %q", got, want)
			}
			if want := "fixture: switch-to-configuration " + tt.op + " for b"; !strings.Contains(m.log.String(), want) {
				t.Errorf("log lacks the activation's output %q:\n%s", want, m.log)
			}
		})
	}
}

func TestSwitchSkipsWhatIsAlreadyDone(t *testing.T) {
	tests := []struct {
		name        string
		profile     string // profile target before, "" = same as running
		op          string
		want        activate.Outcome
		wantCalls   []string
		wantProfile string
	}{
		{name: "switch to the running system", op: "switch", want: activate.Skipped, wantProfile: "a"},
		{name: "test of the running system", op: "test", want: activate.Skipped, wantProfile: "a"},
		{name: "boot is never skipped", op: "boot", want: activate.Switched, wantCalls: []string{"a boot"}, wantProfile: "a"},
		// Running a after "test a" while the profile still holds b: switch
		// must still make a the boot default.
		{name: "switch when only tested", profile: "b", op: "switch", want: activate.Switched, wantCalls: []string{"a switch"}, wantProfile: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			m.runs(t, "a")
			if tt.profile != "" {
				if _, err := m.act.Nix.Run(context.Background(), nix.Cmd{Tool: "nix-env", Args: []string{"-p", m.profile, "--set", systems[tt.profile]}}); err != nil {
					t.Fatal(err)
				}
			}
			out, err := m.act.Switch(context.Background(), systems["a"], tt.op)
			if err != nil {
				t.Fatal(err)
			}
			if out != tt.want {
				t.Errorf("outcome %q, want %q", out, tt.want)
			}
			if got := m.recorded(t); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("switch-to-configuration calls %q, want %q", got, tt.wantCalls)
			}
			if profile, _ := m.state(t); profile != tt.wantProfile {
				t.Errorf("profile → %s, want %s", profile, tt.wantProfile)
			}
		})
	}
}

func TestFailedActivationRollsBack(t *testing.T) {
	for _, op := range []string{"switch", "boot", "test"} {
		t.Run(op, func(t *testing.T) {
			m := newMachine(t)
			m.runs(t, "a")
			previous, err := m.act.Current()
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.act.Switch(context.Background(), systems["fail"], op)
			if err == nil {
				t.Fatal("switch to a failing system succeeded")
			}
			if out != activate.Failed || !out.NeedsRollback() {
				t.Errorf("outcome %q, want %q (roll back)", out, activate.Failed)
			}
			t.Logf("error: %v\nlog:\n%s", err, m.log)
			var ce *activate.CommandError
			if !errors.As(err, &ce) || ce.ExitCode != 1 {
				t.Errorf("error %v: want a *CommandError with exit status 1", err)
			}
			if !strings.Contains(err.Error(), "activation of fail fails on purpose") || !strings.Contains(err.Error(), "exited with status 1") {
				t.Errorf("error does not quote the activation's output and status: %v", err)
			}
			wantProfile := map[string]string{"switch": "fail", "boot": "fail", "test": "a"}[op]
			if profile, current := m.state(t); profile != wantProfile || current != "a" {
				t.Errorf("after the failure: profile → %s, current → %s; want %s, a", profile, current, wantProfile)
			}

			if err := m.act.Rollback(context.Background(), previous, op); err != nil {
				t.Fatalf("rollback: %v\nlog:\n%s", err, m.log)
			}
			if profile, current := m.state(t); profile != "a" || current != "a" {
				t.Errorf("after rollback: profile → %s, current → %s; want a, a", profile, current)
			}
			if got, want := m.recorded(t), []string{"fail " + op, "a " + op}; !slices.Equal(got, want) {
				t.Errorf("switch-to-configuration calls %q, want %q", got, want)
			}
		})
	}
}

// Rolling back after a successful switch (the server became unreachable)
// restores the previous system although a newer generation exists: the
// profile goes to that exact path, not to "the generation before".
func TestRollbackAfterSuccessfulSwitch(t *testing.T) {
	m := newMachine(t)
	m.runs(t, "a")
	ctx := context.Background()
	for _, s := range []string{"b", "kernel"} {
		if _, err := m.act.Switch(ctx, systems[s], "switch"); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.act.Rollback(ctx, systems["a"], "switch"); err != nil {
		t.Fatal(err)
	}
	if profile, current := m.state(t); profile != "a" || current != "a" {
		t.Errorf("after rollback: profile → %s, current → %s; want a, a", profile, current)
	}
	if got, want := m.recorded(t), []string{"b switch", "kernel switch", "a switch"}; !slices.Equal(got, want) {
		t.Errorf("switch-to-configuration calls %q, want %q", got, want)
	}
}

func TestSwitchRefusesBadInput(t *testing.T) {
	notASystem := t.TempDir()
	tests := []struct {
		name, toplevel, op, wantErr string
		nix                         *nix.Runner
	}{
		{name: "unknown operation", toplevel: "a", op: "dry-activate", wantErr: `operation "dry-activate" is not supported: use switch, boot or test`},
		{name: "missing system", toplevel: "/nix/store/00000000000000000000000000000000-nixos-system-x", op: "switch", wantErr: "does not exist: build or fetch it first"},
		{name: "not a system", toplevel: notASystem, op: "switch", wantErr: "has no bin/switch-to-configuration"},
		{name: "relative path", toplevel: "result", op: "switch", wantErr: "not an absolute store path"},
		{name: "nix-env missing", toplevel: "b", op: "switch", nix: &nix.Runner{Bin: "/nonexistent/bin/nix"}, wantErr: "nix is not installed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			m.runs(t, "a")
			if tt.nix != nil {
				m.act.Nix = tt.nix
			}
			top := tt.toplevel
			if p, ok := systems[top]; ok {
				top = p
			}
			out, err := m.act.Switch(context.Background(), top, tt.op)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if out != activate.Untouched || out.NeedsRollback() {
				t.Errorf("outcome %q, want %q: nothing was changed", out, activate.Untouched)
			}
			if profile, current := m.state(t); profile != "a" || current != "a" {
				t.Errorf("profile → %s, current → %s; want both untouched on a", profile, current)
			}
			if calls := m.recorded(t); len(calls) != 0 {
				t.Errorf("switch-to-configuration ran: %q", calls)
			}
		})
	}
}

func TestRollbackRefusesBadInput(t *testing.T) {
	tests := []struct {
		name, previous, op, wantErr string
	}{
		{name: "nothing recorded", previous: "", op: "switch", wantErr: "nothing to roll back to"},
		{name: "previous gone", previous: "/nix/store/00000000000000000000000000000000-nixos-system-x", op: "switch", wantErr: "does not exist"},
		{name: "unknown operation", previous: systems["a"], op: "reboot", wantErr: `operation "reboot" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			m.runs(t, "b")
			err := m.act.Rollback(context.Background(), tt.previous, tt.op)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if profile, current := m.state(t); profile != "b" || current != "b" {
				t.Errorf("profile → %s, current → %s; want both untouched on b", profile, current)
			}
		})
	}
}

func TestCurrentAndBooted(t *testing.T) {
	m := newMachine(t)
	for name, get := range map[string]func() (string, error){"current": m.act.Current, "booted": m.act.Booted, "profile": m.act.ProfileTarget} {
		if p, err := get(); err != nil || p != "" {
			t.Errorf("%s on a fresh machine: %q, %v; want \"\", nil", name, p, err)
		}
	}
	// A relative chain, as NixOS makes: system → system-1-link → store path.
	m.runs(t, "a")
	os.Remove(m.booted)
	if err := os.Symlink("current-system", m.booted); err != nil {
		t.Fatal(err)
	}
	if p, err := m.act.Booted(); err != nil || p != systems["a"] {
		t.Errorf("booted via a relative link: %q, %v; want %s", p, err, systems["a"])
	}
	if p, err := m.act.ProfileTarget(); err != nil || p != systems["a"] {
		t.Errorf("profile: %q, %v; want %s", p, err, systems["a"])
	}
}

func TestReboot(t *testing.T) {
	dir := t.TempDir()
	rec := filepath.Join(dir, "rebooted")
	tests := []struct {
		name    string
		script  string
		wantErr string
		wantRec string
	}{
		{name: "runs the command", script: `echo "reboot $* $BENTO_TEST_VAR" >> ` + rec, wantRec: "reboot now from-env\n"},
		{name: "failure quotes the output", script: `echo "Failed to reboot: access denied" >&2; exit 3`, wantErr: "exited with status 3: Failed to reboot: access denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(rec)
			log := &bytes.Buffer{}
			a := &activate.Activator{
				Paths: activate.Paths{RebootCommand: []string{"/bin/sh", "-c", tt.script, "sh", "now"}},
				Env:   []string{"BENTO_TEST_VAR=from-env"},
				Log:   log,
			}
			err := a.Reboot(context.Background())
			if tt.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			got, _ := os.ReadFile(rec)
			if string(got) != tt.wantRec {
				t.Errorf("reboot command recorded %q, want %q", got, tt.wantRec)
			}
		})
	}
}

func TestDefaultPaths(t *testing.T) {
	p := activate.Paths{Profile: "/tmp/p"}.WithDefaults()
	if p.Profile != "/tmp/p" || p.CurrentSystem != "/run/current-system" || p.BootedSystem != "/run/booted-system" ||
		!slices.Equal(p.RebootCommand, []string{"systemctl", "reboot"}) {
		t.Errorf("defaults: %+v", p)
	}
}

// Once switch-to-configuration runs, cancelling ctx does not cut it in
// half: it runs to its end and its exit status decides.
func TestSwitchIsNotCancelled(t *testing.T) {
	dir := t.TempDir()
	top := filepath.Join(dir, "system")
	if err := os.MkdirAll(filepath.Join(top, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho ready\nwhile [ ! -e \"$GO\" ]; do sleep 0.01; done\necho finished\n"
	if err := os.WriteFile(filepath.Join(top, "bin", "switch-to-configuration"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	gofile := filepath.Join(dir, "go")
	log := &testio.Buffer{}
	ready := log.Line("ready")
	a := &activate.Activator{
		Paths: activate.Paths{Profile: filepath.Join(dir, "profile"), CurrentSystem: filepath.Join(dir, "current"), BootedSystem: filepath.Join(dir, "booted")},
		Env:   []string{"GO=" + gofile},
		Log:   log,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		out activate.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := a.Switch(ctx, top, activate.OpTest)
		done <- result{out, err}
	}()
	select {
	case <-ready:
	case r := <-done:
		t.Fatalf("Switch ended before the script was ready: %v %v\n%s", r.out, r.err, log)
	}
	cancel()
	if err := os.WriteFile(gofile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.out != activate.Switched || !strings.Contains(log.String(), "finished") {
		t.Fatalf("Switch: %v, %v; want Switched with the script finished\n%s", r.out, r.err, log)
	}
	// Before the machine is touched, a done ctx still stops Switch.
	if out, err := a.Switch(ctx, top, activate.OpTest); !errors.Is(err, context.Canceled) || out != activate.Untouched {
		t.Errorf("Switch with a done ctx: %v, %v; want Untouched, context.Canceled", out, err)
	}
}
