package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/jsonschema"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/mirror"
	"github.com/bento-nix/bento/rollout"
	"github.com/bento-nix/bento/status"
)

var updateSchemas = flag.Bool("update", false, "rewrite docs/schema/*.json from the Go types")

// jsonOutputs are the documents --json prints, by the schema file that
// describes each. A new --json output adds its type here.
var jsonOutputs = []struct {
	file, title, description string
	v                        any
}{
	{"status.json", "bento status --json", "The fleet's status (docs/status.md); also bento serve's GET /api/status.", status.Snapshot{}},
	{"hosts.json", "bento hosts --json", "The fleet's hosts as discovery evaluated them.", hostsDoc{}},
	{"build.json", "bento build --json", "Each selected host's build.", buildDoc{}},
	{"deploy.json", "bento deploy --json", "What a deploy built and published (docs/deploy.md).", deploy.Report{}},
	{"agent-status.json", "bento agent status --json", "The agent's state on the host (docs/agent.md).", agent.HostStatus{}},
	{"history.json", "bento history --json", "What happened, when, on which host (the server's history); also bento serve's GET /api/history.", history.Document{}},
	{"mirror.json", "bento mirror push/pull-reports --json", "Each host's copy to or from each mirror (docs/mirrors.md).", mirrorDoc{}},
	// A nil pointer: rollout status prints null when no rollout is recorded.
	{"rollout.json", "bento rollout status/step/abort --json", "The recorded rollout, or null when there is none (docs/rollout.md).", (*rollout.View)(nil)},
}

// The schemas in docs/schema are generated from the types the commands
// encode; this fails when one is stale (go test ./cmd/bento -run
// TestJSONSchemas -update rewrites them).
func TestJSONSchemas(t *testing.T) {
	dir := filepath.Join("..", "..", "docs", "schema")
	for _, o := range jsonOutputs {
		data, err := jsonschema.Marshal(jsonschema.For(o.v, o.title, o.description))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, o.file)
		if *updateSchemas {
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		have, err := os.ReadFile(path)
		if err != nil || string(have) != string(data) {
			t.Errorf("docs/schema/%s is stale or missing (%v): go test ./cmd/bento -run TestJSONSchemas -update", o.file, err)
		}
	}
}

// What the commands print validates against their schema.
func TestJSONOutputsMatchTheirSchema(t *testing.T) {
	s := statusRoot{t, filepath.Join(t.TempDir(), "chroot")}
	s.publish("web", "v2", statusSysB)
	s.report("web", "v1", "v1", manifest.ResultSuccess, statusSysA, "")
	s.publish("db", "v1", statusSysA)
	fl := t.TempDir()
	if err := fixture.Write(fl, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "web-1", Bento: &fixture.Bento{Enable: true, Tags: []string{"web"}, Secrets: []string{"db"}}},
		{Name: "legacy"},
	}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		schema string
		args   []string
	}{
		{"status.json", statusArgs(s.root, "--no-eval", "--json")},
		{"hosts.json", []string{"hosts", "--flake", fl, "--json"}},
		{"build.json", []string{"build", "--flake", fl, "--dry-run", "--json", "--state-dir", t.TempDir()}},
		{"history.json", []string{"history", "--json", "--chroot-root", historyRoot(t)}},
		{"rollout.json", []string{"rollout", "status", "--json", "--chroot-root", t.TempDir()}},
	} {
		t.Run(tc.schema, func(t *testing.T) {
			stdout, stderr, _ := runCLI(t, tc.args...)
			var doc any
			if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
				t.Fatalf("not JSON: %v\n%s\n%s", err, stdout, stderr)
			}
			if err := jsonschema.Validate(loadSchema(t, tc.schema), doc); err != nil {
				t.Errorf("%s does not match docs/schema/%s: %v\n%s", tc.args[0], tc.schema, err, stdout)
			}
		})
	}
}

func loadSchema(t *testing.T, file string) jsonschema.Schema {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "schema", file))
	if err != nil {
		t.Fatal(err)
	}
	var schema jsonschema.Schema
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	return schema
}

// Documents that take a mirror or a rollout to print through the binary
// (an sshd, real builds: mirror/cli_test.go, rollout_test.go) are printed
// here by the functions the commands call, with every field set.
func TestJSONDocumentsMatchTheirSchema(t *testing.T) {
	at := time.Date(2026, 12, 3, 15, 0, 0, 0, time.UTC)
	var mirrorOut bytes.Buffer
	if err := printMirrorJSON(&mirrorOut, []mirror.HostResult{
		{Mirror: "ssh://root@m1:22/home/chroot", Host: "alpha", Files: 3, Bytes: 4096, Skipped: 2, Removed: 1, Changed: true},
		{Mirror: "ssh://root@m1:22/home/chroot", Host: "beta", Note: "no report on the mirror"},
		{Mirror: "ssh://root@m1:22/home/chroot", Host: "gamma", Err: errors.New("no chroot for gamma\x1b[2J\u009b2J\u202e")},
	}, "pushed"); err != nil {
		t.Fatal(err)
	}
	// encoding/json escapes C0 itself; C1 controls and bidi overrides are
	// termsafe.EscapeJSON's to escape.
	if strings.ContainsAny(mirrorOut.String(), "\x1b\u009b\u202e") {
		t.Errorf("mirror --json: a control character reached the output raw:\n%s", mirrorOut.String())
	}
	roll, err := json.Marshal(rollout.View{ID: "r1", State: "running", Reason: "wave 1 waits", Since: at, StartedAt: at, UpdatedAt: at,
		Policy: rollout.PolicyView{Quorum: 0.9, WaveDeadlineSeconds: 3600},
		Waves: []rollout.WaveView{{Wave: 0, State: "published", Hosts: 1, Counts: map[rollout.HostState]int{rollout.HostGood: 1},
			PublishedAt: &at, Deadline: &at, Since: &at, Verdict: "healthy"}},
		Hosts: []rollout.HostView{{Host: "canary", Wave: 0, Version: "v2", Previous: "v1", State: rollout.HostGood, Detail: "up-to-date", Restored: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		schema string
		doc    []byte
		want   string // a value the document must carry
	}{
		{"mirror.json", mirrorOut.Bytes(), "no report on the mirror"},
		{"rollout.json", roll, "canary"},
	} {
		t.Run(tc.schema, func(t *testing.T) {
			var doc any
			if err := json.Unmarshal(tc.doc, &doc); err != nil || !strings.Contains(string(tc.doc), tc.want) {
				t.Fatalf("not JSON or lacks %q: %v\n%s", tc.want, err, tc.doc)
			}
			if err := jsonschema.Validate(loadSchema(t, tc.schema), doc); err != nil {
				t.Errorf("does not match docs/schema/%s: %v\n%s", tc.schema, err, tc.doc)
			}
		})
	}
}
