package nixtest

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated option reference in docs/modules.md")

const (
	docsBegin = "<!-- BEGIN OPTIONS: generated from modules/*.nix by `go test ./nixtest -run TestModuleDocs -update`; edit the descriptions there, not here -->"
	docsEnd   = "<!-- END OPTIONS -->"
)

type optionDoc struct {
	Name        string  `json:"name"`
	Type        string  `json:"type"`
	Default     *string `json:"default"`
	Example     *string `json:"example"`
	Description string  `json:"description"`
}

// moduleOptions lists every option of modules/default.nix (client, server).
func moduleOptions(t testing.TB) (client, server []optionDoc) {
	t.Helper()
	root := repoRoot(t)
	var r struct {
		Client []optionDoc `json:"client"`
		Server []optionDoc `json:"server"`
	}
	evalJSON(t, fmt.Sprintf(`import %s { module = %s; }`,
		nixString(filepath.Join(root, "nixtest/testdata/options.nix")), nixString(filepath.Join(root, "modules/default.nix"))), &r)
	return r.Client, r.Server
}

var nixosRoleRE = regexp.MustCompile("\\{(option|manpage|command|file|var|env)\\}`")

// renderOptions is the generated part of docs/modules.md.
func renderOptions(client, server []optionDoc) string {
	var b strings.Builder
	code := func(s string) string {
		if strings.Contains(s, "\n") {
			return "\n\n  ```nix\n  " + strings.ReplaceAll(s, "\n", "\n  ") + "\n  ```"
		}
		if strings.Contains(s, "`") {
			return "`` " + s + " ``"
		}
		return "`" + s + "`"
	}
	section := func(title string, opts []optionDoc) {
		fmt.Fprintf(&b, "\n## %s\n", title)
		for _, o := range opts {
			fmt.Fprintf(&b, "\n### `%s`\n\n", o.Name)
			desc := nixosRoleRE.ReplaceAllString(strings.TrimSpace(o.Description), "`")
			fmt.Fprintf(&b, "%s\n\n", desc)
			fmt.Fprintf(&b, "- Type: %s\n", o.Type)
			if o.Default != nil {
				fmt.Fprintf(&b, "- Default: %s\n", code(*o.Default))
			} else {
				b.WriteString("- Default: none (must be set)\n")
			}
			if o.Example != nil {
				fmt.Fprintf(&b, "- Example: %s\n", code(*o.Example))
			}
		}
	}
	section("Client: `services.bento`", client)
	section("Server: `services.bento-server`", server)
	return b.String()
}

var docHeadingRE = regexp.MustCompile("(?m)^### `([^`]+)`$")

// docs/modules.md documents every option of the modules, with the type,
// default, example and description the modules declare.
func TestModuleDocs(t *testing.T) {
	needNix(t)
	client, server := moduleOptions(t)
	names := map[string]bool{}
	for _, o := range append(append([]optionDoc(nil), client...), server...) {
		names[o.Name] = true
		if strings.TrimSpace(o.Description) == "" {
			t.Errorf("option %s has no description (modules/*.nix)", o.Name)
		}
	}
	if len(client) < 30 || len(server) < 10 {
		t.Fatalf("only %d client and %d server options found", len(client), len(server))
	}

	path := filepath.Join(repoRoot(t), "docs/modules.md")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with: go test ./nixtest -run TestModuleDocs -update)", err)
	}
	doc := string(data)
	begin, end := strings.Index(doc, docsBegin), strings.Index(doc, docsEnd)
	if begin < 0 || end < begin {
		t.Fatalf("docs/modules.md lacks the markers\n%s\n%s\naround the option reference", docsBegin, docsEnd)
	}
	generated := renderOptions(client, server) + "\n"
	current := doc[begin+len(docsBegin) : end]
	if *update {
		doc = doc[:begin+len(docsBegin)] + generated + doc[end:]
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}

	documented := map[string]bool{}
	for _, m := range docHeadingRE.FindAllStringSubmatch(current, -1) {
		documented[m[1]] = true
	}
	for _, n := range keys(names) {
		if !documented[n] {
			t.Errorf("option %s is not documented in docs/modules.md", n)
		}
	}
	for _, n := range keys(documented) {
		if !names[n] {
			t.Errorf("docs/modules.md documents %s, which the modules do not declare", n)
		}
	}
	if current != generated {
		t.Errorf("docs/modules.md's option reference differs from the modules' declarations (types, defaults or descriptions).\nRegenerate it: go test ./nixtest -run TestModuleDocs -update")
	}
}
