package agent

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// FuzzParseHead feeds the top of a manifest.json as the server (or anyone
// who took it over) may write it: parseHead must never panic, and what it
// concludes from a prefix it must also conclude from the whole file, since
// the agent reads only as much as parseHead asks for.
func FuzzParseHead(f *testing.F) {
	m := manifest.Manifest{Format: 1, Host: "alpha", Version: "0123456789abcdef", PublishedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		ExpectedToplevel: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha", Flake: manifest.Flake{Attr: "nixosConfigurations.alpha"},
		Files: []manifest.File{{Path: "flake.nix", Mode: 0o444, Size: 3, SHA256: strings.Repeat("a", 64)}}}
	compact, _ := json.Marshal(m)
	indented, _ := json.MarshalIndent(m, "", "  ")
	f.Add(compact, uint16(60))
	f.Add(indented, uint16(200))
	f.Add([]byte(`{"version":"current","files":[]}`), uint16(10))
	f.Add([]byte(`{"format":1e400,"host":{"x":[1,2,{"y":"\u001b"}]},"version":"../x","expectedToplevel":"path:/etc","files":[]}`), uint16(30))
	f.Add([]byte(`{"files":[],"version":"x"}`), uint16(5))
	f.Add([]byte(`{"version":"a","version":"b","secrets":null}`), uint16(20))
	f.Fuzz(func(t *testing.T, data []byte, cut uint16) {
		whole, wholeOK := parseHead(data)
		at := int(cut) % (len(data) + 1)
		part, partOK := parseHead(data[:at])
		if partOK && (!wholeOK || part != whole) {
			t.Fatalf("the first %d bytes say %+v, the whole file %+v (ok %v)", at, part, whole, wholeOK)
		}
	})
}
