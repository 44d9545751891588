package manifest_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// FuzzParse feeds hostile manifest bytes to Parse: it must never panic, and
// whatever it accepts must survive a marshal/parse round trip, since the
// server re-encodes manifests it has validated.
func FuzzParse(f *testing.F) {
	good, _ := json.Marshal(manifest.Manifest{Format: 1, Host: "alpha", Version: "0123456789abcdef",
		Flake: manifest.Flake{Attr: "nixosConfigurations.alpha"},
		Files: []manifest.File{{Path: "flake.nix", Mode: 0o444, Size: 3, SHA256: strings.Repeat("a", 64)}}})
	f.Add(good)
	f.Add([]byte("{"))
	f.Add([]byte(`{"format":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := manifest.Parse(data)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Parse accepted a manifest that does not re-validate: %v", err)
		}
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal accepted manifest: %v", err)
		}
		if _, err := manifest.Parse(again); err != nil {
			t.Fatalf("re-encoded manifest no longer parses: %v\n%s", err, again)
		}
	})
}
