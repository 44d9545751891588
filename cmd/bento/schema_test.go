package main

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/jsonschema"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

var updateSchemas = flag.Bool("update", false, "rewrite docs/schema/*.json from the Go types")

// jsonOutputs are the documents --json prints, by the schema file that
// describes each. A new --json output adds its type here.
var jsonOutputs = []struct {
	file, title, description string
	v                        any
}{
	{"status.json", "bento status --json", "The fleet's status (docs/status.md).", status.Snapshot{}},
	{"hosts.json", "bento hosts --json", "The fleet's hosts as discovery evaluated them.", hostsDoc{}},
	{"build.json", "bento build --json", "Each selected host's build.", buildDoc{}},
	{"deploy.json", "bento deploy --json", "What a deploy built and published (docs/deploy.md).", deploy.Report{}},
	{"agent-status.json", "bento agent status --json", "The agent's state on the host (docs/agent.md).", agent.HostStatus{}},
	{"history.json", "bento history --json", "What happened, when, on which host (the server's history).", history.Document{}},
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
	} {
		t.Run(tc.schema, func(t *testing.T) {
			stdout, stderr, _ := runCLI(t, tc.args...)
			var doc any
			if err := json.Unmarshal([]byte(stdout), &doc); err != nil {
				t.Fatalf("not JSON: %v\n%s\n%s", err, stdout, stderr)
			}
			data, err := os.ReadFile(filepath.Join("..", "..", "docs", "schema", tc.schema))
			if err != nil {
				t.Fatal(err)
			}
			var schema jsonschema.Schema
			if err := json.Unmarshal(data, &schema); err != nil {
				t.Fatal(err)
			}
			if err := jsonschema.Validate(schema, doc); err != nil {
				t.Errorf("%s does not match docs/schema/%s: %v\n%s", tc.args[0], tc.schema, err, stdout)
			}
		})
	}
}
