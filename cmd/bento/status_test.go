package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/testio"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

const (
	statusSysA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a-1"
	statusSysB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b-2"
)

// statusRoot writes chroots by hand, as deploy and the agents would.
type statusRoot struct {
	t    *testing.T
	root string
}

func (s statusRoot) write(host, rel string, v any) {
	s.t.Helper()
	p := filepath.Join(s.root, host, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	data, ok := v.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(v); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := os.WriteFile(p+".tmp", data, 0o644); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		s.t.Fatal(err)
	}
}

func (s statusRoot) publish(host, version, expected string) {
	s.write(host, manifest.ManifestFile, manifest.Manifest{Format: 1, Host: host, Version: version, PublishedAt: time.Now().Add(-time.Hour), ExpectedToplevel: expected})
}

func (s statusRoot) report(host, applied, attempted string, result manifest.Result, system, errMsg string) {
	s.write(host, manifest.StatusFile, manifest.Report{
		Format: 1, Host: host, SeenVersion: attempted, AppliedVersion: applied, AttemptedVersion: attempted,
		Stage: manifest.StageConfirmed, Result: result, Error: errMsg, CurrentSystem: system, ActualToplevel: system,
		StartedAt: time.Now().Add(-2 * time.Minute), FinishedAt: time.Now().Add(-time.Minute),
	})
}

// statusArgs runs status without a flake (cmd/bento has none) on root.
func statusArgs(root string, extra ...string) []string {
	return append([]string{"status", "--chroot-root", root, "--state-dir", filepath.Join(root, "..", "state")}, extra...)
}

func TestStatusCommandExitCodes(t *testing.T) {
	s := statusRoot{t, filepath.Join(t.TempDir(), "chroot")}
	s.publish("web", "v1", statusSysA)
	s.report("web", "v1", "v1", manifest.ResultSuccess, statusSysA, "")

	steps := []struct {
		name   string
		change func()
		code   int
		stdout []string
	}{
		{"all up to date", func() {}, 0, []string{"HOST ", "web ", "up-to-date", "1 host: 1 up-to-date"}},
		{"a newer version published", func() { s.publish("web", "v2", statusSysB) }, 3, []string{"pending", "1 host: 1 pending"}},
		{"a host that never reported", func() { s.publish("db", "v1", statusSysA) }, 4, []string{"never-seen", "2 hosts: 1 never-seen, 1 pending"}},
		{"the new version fails", func() {
			s.report("web", "v1", "v2", manifest.ResultFailure, statusSysA, "build: fixture: build of web fails on purpose")
		}, 5, []string{"failing", "build: fixture: build of web fails on purpose", "2 hosts: 1 failing, 1 never-seen"}},
	}
	for _, st := range steps {
		st.change()
		stdout, stderr, code := runCLI(t, statusArgs(s.root)...)
		if code != st.code {
			t.Fatalf("%s: exit %d, want %d\n%s%s", st.name, code, st.code, stdout, stderr)
		}
		for _, w := range st.stdout {
			if !strings.Contains(stdout, w) {
				t.Errorf("%s: stdout lacks %q:\n%s", st.name, w, stdout)
			}
		}
		if strings.Contains(stdout, "\x1b[") {
			t.Errorf("%s: colour codes in output that is not a terminal", st.name)
		}
		if !strings.Contains(stderr, "no fleet flake in") {
			t.Errorf("%s: stderr does not say the flake was not evaluated: %q", st.name, stderr)
		}
		if strings.Contains(stderr, "bento:") && !strings.Contains(stderr, "no fleet flake") {
			t.Errorf("%s: stderr has an error: %q", st.name, stderr)
		}
	}

	// --json: the same facts for scripts, and the same exit status.
	stdout, _, code := runCLI(t, statusArgs(s.root, "--json", "--no-eval")...)
	var doc struct {
		ExitCode int `json:"exitCode"`
		Hosts    []struct {
			Host, State, Error string
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	if code != 5 || doc.ExitCode != 5 || len(doc.Hosts) != 2 || doc.Hosts[0].Host != "web" || doc.Hosts[0].State != "failing" || doc.Hosts[1].State != "never-seen" {
		t.Errorf("--json: exit %d, %+v", code, doc)
	}
}

func TestStatusCommandOutputs(t *testing.T) {
	base := t.TempDir()
	s := statusRoot{t, filepath.Join(base, "chroot")}
	s.publish("web", "v1", statusSysA)
	s.report("web", "v1", "v1", manifest.ResultSuccess, statusSysA, "")

	// --prometheus on standard output parses as the textfile collector would.
	stdout, stderr, code := runCLI(t, statusArgs(s.root, "--no-eval", "--prometheus")...)
	if code != 0 {
		t.Fatalf("--prometheus: exit %d\n%s", code, stderr)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(stdout))
	if err != nil {
		t.Fatalf("--prometheus output does not parse: %v\n%s", err, stdout)
	}
	if _, ok := fams["bento_host_state"]; !ok {
		t.Errorf("no bento_host_state in %v", fams)
	}

	// --prometheus=FILE writes the file and still prints the table.
	prom := filepath.Join(base, "bento.prom")
	stdout, stderr, code = runCLI(t, statusArgs(s.root, "--no-eval", "--prometheus="+prom)...)
	if code != 0 || !strings.Contains(stdout, "1 host: 1 up-to-date") {
		t.Fatalf("--prometheus=FILE: exit %d\n%s%s", code, stdout, stderr)
	}
	data, err := os.ReadFile(prom)
	if err != nil || !bytes.Contains(data, []byte(`bento_host_state{host="web",state="up-to-date"} 1`)) {
		t.Errorf("%s: %v\n%s", prom, err, data)
	}

	// The server's build record is shown (serverBuilt) when the manifest
	// names no system, but it may be of another version: no drift.
	s.publish("web", "v1", "")
	rec, _ := json.Marshal(builder.Record{Host: "web", OutPath: statusSysB, BuiltAt: time.Now()})
	os.MkdirAll(filepath.Join(base, "state", builder.BuildsDir), 0o755)
	os.WriteFile(filepath.Join(base, "state", builder.BuildsDir, "web.json"), rec, 0o644)
	stdout, _, code = runCLI(t, statusArgs(s.root, "--no-eval", "--json")...)
	if code != 0 || !strings.Contains(stdout, `"serverBuilt": "`+statusSysB+`"`) || !strings.Contains(stdout, `"state": "up-to-date"`) || !strings.Contains(stdout, "not built by the server") {
		t.Errorf("with a build record: exit %d\n%s", code, stdout)
	}
}

func TestStatusCommandBadInput(t *testing.T) {
	base := t.TempDir()
	s := statusRoot{t, filepath.Join(base, "chroot")}
	s.publish("web", "v1", statusSysA)
	cases := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"unknown host", statusArgs(s.root, "--no-eval", "nope"), 2, `host selection "nope" matches no host (known hosts: web)`},
		{"missing root", statusArgs(filepath.Join(base, "missing")), 1, "chroot root does not exist: " + filepath.Join(base, "missing")},
		{"flag after --", statusArgs(s.root, "--no-eval", "--", "web", "--json"), 2, "--json comes after the host names"},
		{"prometheus file without =", statusArgs(s.root, "--prometheus", "/tmp/x.prom"), 2, `write --prometheus=/tmp/x.prom (with =)`},
		{"json and prometheus", statusArgs(s.root, "--json", "--prometheus"), 2, "choose one"},
		{"watch and json", statusArgs(s.root, "--watch", "--json"), 2, "does not mix with --json"},
		{"bad sort", statusArgs(s.root, "--sort", "size"), 2, `--sort "size": sort by state, name, seen or published`},
		{"negative stale-after", statusArgs(s.root, "--stale-after", "-1m"), 2, "--stale-after must be positive"},
		{"tag without the flake", statusArgs(s.root, "--no-eval", "@web"), 2, "selecting by tag needs the flake's options"},
		{"a flake that is not one", append(statusArgs(s.root), "--flake", base), 1, "--no-eval shows what the chroot root holds"},
	}
	for _, tc := range cases {
		stdout, stderr, code := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d and %q\n%s", tc.name, code, stderr, tc.code, tc.stderr, stdout)
		}
	}
}

// TestStatusCommandWithFlake evaluates a fixture fleet: hosts bento does not
// deploy and hosts removed from the flake are told apart.
func TestStatusCommandWithFlake(t *testing.T) {
	base := t.TempDir()
	fl := filepath.Join(base, "fleet")
	err := fixture.Write(fl, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "web", Bento: &fixture.Bento{Enable: true, Interval: "hourly", Tags: []string{"prod"}}},
		{Name: "lab", Bento: &fixture.Bento{Enable: false}},
		{Name: "legacy"},
		{Name: "broken", Bento: &fixture.Bento{Enable: true}, FailEval: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	s := statusRoot{t, filepath.Join(base, "chroot")}
	s.publish("web", "v1", statusSysA)
	s.report("web", "v1", "v1", manifest.ResultSuccess, statusSysA, "")
	s.publish("old", "v1", statusSysA)
	s.publish("broken", "v1", statusSysA)
	s.report("broken", "v1", "v1", manifest.ResultSuccess, statusSysA, "")

	stdout, stderr, code := runCLI(t, statusArgs(s.root, "--flake", fl, "--json")...)
	var doc struct {
		Flake string
		Hosts []struct {
			Host, State, Message string
			StaleAfterSeconds    int64
		}
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
		t.Fatalf("exit %d: %v\n%s\n%s", code, err, stdout, stderr)
	}
	got := map[string]string{}
	for _, h := range doc.Hosts {
		got[h.Host] = h.State
		switch h.Host {
		case "web":
			if h.StaleAfterSeconds != 3*3600 {
				t.Errorf("web: stale after %ds, want 3 hourly polls", h.StaleAfterSeconds)
			}
		case "broken":
			if !strings.Contains(h.Message, "evaluation failed") || !strings.Contains(h.Message, "fails on purpose") {
				t.Errorf("broken: message %q does not quote the evaluation error", h.Message)
			}
		}
	}
	want := map[string]string{"web": "up-to-date", "lab": "disabled", "legacy": "not-managed", "old": "removed-from-flake", "broken": "up-to-date"}
	for h, st := range want {
		if got[h] != st {
			t.Errorf("%s: %q, want %q", h, got[h], st)
		}
	}
	if len(got) != len(want) || code != 0 || doc.Flake != fl {
		t.Errorf("exit %d, flake %q, hosts %v\n%s", code, doc.Flake, got, stderr)
	}
	stdout, _, code = runCLI(t, statusArgs(s.root, "--flake", fl, "@prod")...)
	if code != 0 || !strings.Contains(stdout, "1 host: 1 up-to-date") {
		t.Errorf("@prod: exit %d\n%s", code, stdout)
	}
}

func TestLogsCommand(t *testing.T) {
	s := statusRoot{t, filepath.Join(t.TempDir(), "chroot")}
	s.publish("web", "v1", statusSysA)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("building web\n\x1b]0;title\x07switching\n"))
	zw.Close()
	s.write("web", manifest.LogsDir+"/v1-20250314T110000Z.log.gz", gz.Bytes())
	s.write("web", manifest.LogsDir+"/v0-20250314T100000Z.log.gz", []byte("plain old log\n"))
	s.write("web", manifest.StatusFile, manifest.Report{Format: 1, Host: "web", FinishedAt: time.Now(), Log: "v1-20250314T110000Z.log.gz"})

	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"latest, decompressed", []string{"logs", "--chroot-root", s.root, "web"}, 0, "building web\nswitching\n", "==> web: v1-20250314T110000Z.log.gz <=="},
		{"by version", []string{"logs", "--chroot-root", s.root, "web", "v0"}, 0, "plain old log\n", ""},
		{"list", []string{"logs", "--chroot-root", s.root, "--list", "web"}, 0, "v1-20250314T110000Z.log.gz", ""},
		{"no host", []string{"logs", "--chroot-root", s.root}, 2, "", "say which host"},
		{"unknown host", []string{"logs", "--chroot-root", s.root, "nope"}, 2, "", "host nope: no chroot at"},
		{"unknown log", []string{"logs", "--chroot-root", s.root, "web", "v9"}, 2, "", `host web has no log "v9"`},
		{"diff without builds", []string{"diff", "--chroot-root", s.root, "--state-dir", t.TempDir(), "--previous", "web"}, 1, "", "the server has no build record"},
		{"diff of a silent host", []string{"diff", "--chroot-root", s.root, "--state-dir", t.TempDir(), "nope"}, 2, "", "host nope: no chroot at"},
	}
	for _, tc := range cases {
		stdout, stderr, code := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout, tc.stdout) || !strings.Contains(stderr, tc.stderr) {
			t.Errorf("%s: exit %d\nstdout %q\nstderr %q\nwant exit %d, %q, %q", tc.name, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
}

// TestStatusWatch runs bento status --watch, changes a report and stops it
// as Ctrl-C would (its context): it redraws and exits 0.
func TestStatusWatch(t *testing.T) {
	s := statusRoot{t, filepath.Join(t.TempDir(), "chroot")}
	s.publish("web", "v2", statusSysB)
	s.report("web", "v1", "v1", manifest.ResultSuccess, statusSysA, "")
	var out, errOut testio.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		err := app.RunContext(ctx, append([]string{"bento"}, statusArgs(s.root, "--no-eval", "--watch", "--every", "1h")...))
		done <- exitCode(&errOut, err)
	}()
	wait := func(what string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out.String(), what) {
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("watch never showed %q:\n%s", what, out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("1 host: 1 pending")
	s.report("web", "v2", "v2", manifest.ResultSuccess, statusSysB, "")
	wait("1 host: 1 up-to-date")
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("watch ended with exit %d after Ctrl-C, want 0: %s", code, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("watch did not stop on cancel")
	}
	// Not a terminal: one table per change, no screen control codes.
	if strings.Contains(out.String(), "\x1b[") || strings.Count(out.String(), "HOST ") != 2 {
		t.Errorf("watch output to a pipe:\n%q", out.String())
	}
}
