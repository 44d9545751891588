package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
)

func TestHostsCommand(t *testing.T) {
	dir := t.TempDir()
	hosts := []fixture.Host{
		{Name: "web-1", Bento: &fixture.Bento{Enable: true, Tags: []string{"web"}}},
		{Name: "web-2", Bento: &fixture.Bento{Enable: true, Tags: []string{"web"}}},
		{Name: "pi", Bento: &fixture.Bento{Enable: true, Tags: []string{"pi"}, User: "pi-sftp"}},
		{Name: "lab", Bento: &fixture.Bento{Enable: false}},
		{Name: "legacy"},
	}
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hosts}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		code     int
		stdout   []string // each must appear
		absent   []string // none may appear in stdout
		stderr   []string
		jsonHost []string // with --json: exactly these hosts, in order
	}{
		{name: "all hosts", args: []string{"hosts", "--flake", dir}, code: 0,
			stdout: []string{"HOST    ENABLED    PLATFORM", "web-1   yes ", "pi-sftp", "lab     no ", "legacy  no module"}},
		{name: "glob", args: []string{"hosts", "--flake", dir, "web-*"}, code: 0,
			stdout: []string{"web-1", "web-2"}, absent: []string{"pi", "legacy"}},
		{name: "tag as json", args: []string{"hosts", "--flake", dir, "--json", "@pi"}, code: 0,
			jsonHost: []string{"pi"}},
		{name: "names and tags combine", args: []string{"hosts", "--json", "--flake", dir, "legacy", "@web"}, code: 0,
			jsonHost: []string{"legacy", "web-1", "web-2"}},
		{name: "selection matching nothing", args: []string{"hosts", "--flake", dir, "db-*"}, code: 2,
			stderr: []string{`host selection "db-*" matches no host`, "known hosts: lab, legacy, pi, web-1, web-2"}},
		// Flags go anywhere after the command; after an explicit "--"
		// everything is a host name.
		{name: "flag after host names", args: []string{"hosts", "--flake", dir, "pi", "--json"}, jsonHost: []string{"pi"}},
		{name: "flag after --", args: []string{"hosts", "--flake", dir, "--", "pi", "--json"}, code: 2,
			stderr: []string{"--json comes after the host names"}},
		{name: "not a fleet", args: []string{"hosts", "--flake", t.TempDir()}, code: 1,
			stderr: []string{"no flake.nix and no hosts/<name>/configuration.nix"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.absent {
				if strings.Contains(stdout, w) {
					t.Errorf("stdout has %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if tc.jsonHost != nil {
				var got struct {
					Hosts []struct {
						Name  string `json:"host"`
						State string `json:"state"`
					} `json:"hosts"`
				}
				if err := json.Unmarshal([]byte(stdout), &got); err != nil {
					t.Fatalf("--json output is not JSON: %v\n%s", err, stdout)
				}
				var names []string
				for _, h := range got.Hosts {
					names = append(names, h.Name)
				}
				if strings.Join(names, ",") != strings.Join(tc.jsonHost, ",") {
					t.Errorf("hosts %v, want %v", names, tc.jsonHost)
				}
			}
		})
	}
}

// NO_COLOR is set to any value by users (no-color.org); it must never be
// parsed as a flag value.
func TestNoColorAnyValue(t *testing.T) {
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: fixture.Many("h", 1, nil)}); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"1", "yes", "true"} {
		t.Setenv("NO_COLOR", v)
		if stdout, stderr, code := runCLI(t, "hosts", "--flake", dir); code != 0 || !strings.Contains(stdout, "h-000") {
			t.Errorf("NO_COLOR=%s: exit %d, stdout %q, stderr %q", v, code, stdout, stderr)
		}
	}
}

// --flake is global: it works before the command as well as after it.
func TestFlakeBeforeOrAfterCommand(t *testing.T) {
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: fixture.Many("h", 2, nil)}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--flake", dir, "hosts"},
		{"-f", dir, "hosts"},
		{"hosts", "--flake", dir},
		{"--flake", "/nonexistent", "hosts", "-f", dir},
	} {
		stdout, stderr, code := runCLI(t, args...)
		if code != 0 || !strings.Contains(stdout, "h-001") {
			t.Errorf("bento %v: exit %d, stdout %q, stderr %q", args, code, stdout, stderr)
		}
	}
	t.Setenv("BENTO_FLAKE", dir)
	if stdout, _, code := runCLI(t, "hosts"); code != 0 || !strings.Contains(stdout, "h-000") {
		t.Errorf("BENTO_FLAKE: exit %d, %q", code, stdout)
	}
}

// One host that does not evaluate: named with Nix's message; with
// --keep-going the others are listed and the exit status still says so.
func TestHostsEvalErrorAndKeepGoing(t *testing.T) {
	dir := t.TempDir()
	hosts := fixture.Many("h", 3, nil)
	hosts[1].FailEval = true
	if err := fixture.Write(dir, fixture.Fleet{Hosts: hosts}); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code := runCLI(t, "hosts", "--flake", dir)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "host h-001: evaluation failed") ||
		!strings.Contains(stderr, "fixture: evaluation of h-001 fails on purpose") || !strings.Contains(stderr, "--keep-going") {
		t.Errorf("without --keep-going: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "hosts", "--keep-going", "--flake", dir)
	if code != 1 || !strings.Contains(stdout, "h-000") || !strings.Contains(stdout, "h-002") || strings.Contains(stdout, "h-001") ||
		!strings.Contains(stderr, "host=h-001") {
		t.Errorf("with --keep-going: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
}
