package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/internal/fixture"
)

func TestBuildCommand(t *testing.T) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	gen := hex.EncodeToString(rnd[:])
	dir := t.TempDir()
	if err := fixture.Write(dir, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true, Tags: []string{"good"}}, Generation: gen},
		{Name: "beta", Bento: &fixture.Bento{Enable: true, Tags: []string{"good"}}, Generation: gen},
		{Name: "bad", Bento: &fixture.Bento{Enable: true}, Generation: gen, FailBuild: true},
		{Name: "off", Bento: &fixture.Bento{Enable: false}, Generation: gen},
		{Name: "plain", Generation: gen},
	}}); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		absent []string
		stderr []string
		// state checks what the state directory holds afterwards.
		state func(t *testing.T, state string)
	}{
		{name: "good and failing hosts", args: []string{"--jobs", "2"}, code: 1,
			stdout: []string{
				"HOST   RESULT  DURATION  OUT PATH\n",
				"alpha  built ", "beta   built ", "bad    failed",
				"✗ bad: build: error: builder for",
				"fixture: build of bad fails on purpose", // the log's tail
				"2 built, 1 failed; needs attention: bad",
			},
			absent: []string{"off ", "plain "},
			stderr: []string{
				"skipping off: disabled (services.bento.enable = false)",
				"skipping plain: not managed by bento",
				"bento: 1 of 3 hosts failed to build: bad",
			},
			state: func(t *testing.T, state string) {
				for _, h := range []string{"alpha", "beta", "bad"} {
					links, _ := filepath.Glob(filepath.Join(state, "gcroots", h, "2*"))
					var targets []string
					for _, l := range links {
						target, _ := os.Readlink(l)
						targets = append(targets, target)
					}
					ok := len(targets) == 1 && strings.Contains(targets[0], "nixos-system-"+h)
					if h == "bad" {
						ok = len(targets) == 0
					}
					if !ok {
						t.Errorf("%s: GC roots point at %v", h, targets)
					}
					// The whole fleet is built: discovery instantiated
					// the systems, the build did not evaluate them again.
					logs, _ := filepath.Glob(filepath.Join(state, "logs", h, "*.log"))
					if len(logs) != 1 {
						t.Fatalf("%s: logs %v", h, logs)
					}
					if log, _ := os.ReadFile(logs[0]); !strings.Contains(string(log), "(instantiated during discovery)") || strings.Contains(string(log), "$ nix eval") {
						t.Errorf("%s: log should say its system was instantiated during discovery:\n%s", h, log)
					}
				}
			}},
		{name: "json for a tag", args: []string{"--json", "@good"}, code: 0,
			stdout: []string{`"state": "built"`}},
		{name: "dry run", args: []string{"--dry-run", "alpha"}, code: 0,
			stdout: []string{"DRV PATH", "alpha  dry-run", ".drv\n", "1 dry-run\n"},
			state: func(t *testing.T, state string) {
				if links, _ := filepath.Glob(filepath.Join(state, "gcroots", "alpha", "*")); len(links) != 0 {
					t.Errorf("dry run made GC roots %v", links)
				}
			}},
		{name: "unknown store URL", args: []string{"--copy-to", "bogus://x", "alpha"}, code: 1,
			stdout: []string{"alpha  built, copy failed", "copy to bogus://x: error: don't know how to open Nix store 'bogus://x'"},
			stderr: []string{"1 of 1 hosts were built but not copied: alpha"}},
		{name: "jobs 0", args: []string{"--jobs", "0"}, code: 2,
			stderr: []string{"--jobs must be at least 1, got 0"}},
		{name: "negative jobs", args: []string{"-j", "-2"}, code: 2,
			stderr: []string{"--jobs must be at least 1, got -2"}},
		{name: "unknown host", args: []string{"gamma"}, code: 2,
			stderr: []string{`host selection "gamma" matches no host`}},
		{name: "only a disabled host", args: []string{"off"}, code: 2,
			stderr: []string{"skipping off: disabled", "nothing to build: no selected host is deployed"}},
		{name: "sign key without copy", args: []string{"--sign-key", notDir}, code: 2,
			stderr: []string{"--sign-key signs what is copied: add --copy-to"}},
		{name: "eval memory not a size", args: []string{"--eval-memory", "lots"}, code: 2,
			stderr: []string{`--eval-memory: memory size "lots": want a positive number of bytes or one with a K, M, G or T suffix (8G, 512M)`}},
		{name: "negative eval chunk", args: []string{"--eval-chunk", "-1"}, code: 2,
			stderr: []string{"--eval-chunk must be 0 (sized by --eval-memory) or more, got -1"}},
		{name: "missing sign key", args: []string{"--copy-to", "file:///nonexistent", "--sign-key", "/nonexistent/key"}, code: 2,
			stderr: []string{"--sign-key: stat /nonexistent/key: no such file or directory"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "state")
			args := append([]string{"build", "--flake", dir, "--state-dir", state}, tc.args...)
			stdout, stderr, code := runCLI(t, args...)
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
			if tc.code == 2 {
				if _, err := os.Stat(state); err == nil {
					t.Errorf("a usage error created the state directory")
				}
			}
			if tc.state != nil {
				tc.state(t, state)
			}
		})
	}

	t.Run("json results", func(t *testing.T) {
		stdout, stderr, code := runCLI(t, "build", "--flake", dir, "--state-dir", t.TempDir(), "--json", "alpha", "bad", "off")
		if code != 1 {
			t.Fatalf("exit %d, want 1: %s", code, stderr)
		}
		var out struct {
			OK      bool
			Results []struct {
				Host, OutPath, LogFile, Error string
				Status                        string `json:"state"`
				OK                            bool
			}
			Skipped []struct{ Host, Reason string }
		}
		if err := json.Unmarshal([]byte(stdout), &out); err != nil {
			t.Fatalf("--json output is not JSON: %v\n%s", err, stdout)
		}
		if out.OK || len(out.Results) != 2 || len(out.Skipped) != 1 || out.Skipped[0].Host != "off" {
			t.Fatalf("unexpected JSON: %+v", out)
		}
		a, b := out.Results[0], out.Results[1]
		if a.Host != "alpha" || a.Status != "built" || !a.OK {
			t.Errorf("alpha: %+v", a)
		}
		if _, err := os.Stat(filepath.Join(a.OutPath, "bin", "switch-to-configuration")); err != nil {
			t.Errorf("alpha: out path %s is not a built system: %v", a.OutPath, err)
		}
		if b.Host != "bad" || b.Status != "failed" || b.OK || !strings.Contains(b.Error, "failed with exit code 1") {
			t.Errorf("bad: %+v", b)
		}
		if log, err := os.ReadFile(b.LogFile); err != nil || !strings.Contains(string(log), "fails on purpose") {
			t.Errorf("bad: log %s: %q %v", b.LogFile, log, err)
		}
	})

	// A second build of unchanged hosts realises nothing: the JSON says
	// unchanged, the out paths are those of the first build.
	t.Run("unchanged rebuild", func(t *testing.T) {
		state := t.TempDir()
		type results struct {
			Results []struct {
				Host, OutPath string
				Status        string `json:"state"`
				Unchanged     bool
			}
		}
		var runs [2]results
		for i := range runs {
			stdout, stderr, code := runCLI(t, "build", "--flake", dir, "--state-dir", state, "--json", "@good")
			if code != 0 {
				t.Fatalf("run %d: exit %d: %s", i+1, code, stderr)
			}
			if err := json.Unmarshal([]byte(stdout), &runs[i]); err != nil || len(runs[i].Results) != 2 {
				t.Fatalf("run %d: %v\n%s", i+1, err, stdout)
			}
		}
		for j, r := range runs[1].Results {
			first := runs[0].Results[j]
			if first.Unchanged || !r.Unchanged || r.Status != "built" || r.OutPath != first.OutPath {
				t.Errorf("%s: first %+v, second %+v; want built then unchanged with the same out path", r.Host, first, r)
			}
		}
	})

	// --help says how the defaults are chosen, not only what they are.
	t.Run("help explains the defaults", func(t *testing.T) {
		stdout, _, _ := runCLI(t, "build", "--help")
		for _, w := range []string{"one per Nix build user", "3/4 of MemAvailable", "first chunk's measured peak memory"} {
			if !strings.Contains(stdout, w) {
				t.Errorf("bento build --help lacks %q:\n%s", w, stdout)
			}
		}
	})

	t.Run("unwritable state directory", func(t *testing.T) {
		_, stderr, code := runCLI(t, "build", "--flake", dir, "--state-dir", filepath.Join(notDir, "state"), "alpha")
		if code != 1 || !strings.Contains(stderr, "state directory "+notDir+"/state is not usable") || !strings.Contains(stderr, "--state-dir or BENTO_STATE_DIR") {
			t.Errorf("exit %d, stderr %q", code, stderr)
		}
	})
}

// A dry run's summary names drv paths whatever the first host's fate.
func TestBuildSummaryDryRunHeader(t *testing.T) {
	var out strings.Builder
	results := []builder.Result{
		{Host: "alpha", Status: builder.StatusFailed, Err: errors.New("error: boom")},
		{Host: "beta", Status: builder.StatusDryRun, DrvPath: "/nix/store/bbbb-nixos-system-beta.drv", OutPath: "/nix/store/cccc-nixos-system-beta"},
	}
	if err := printBuildSummary(&out, results, false); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "HOST   RESULT   DURATION  DRV PATH\n") || !strings.Contains(out.String(), "beta   dry-run  0s        /nix/store/bbbb-nixos-system-beta.drv\n") {
		t.Errorf("summary:\n%s", out.String())
	}
}
