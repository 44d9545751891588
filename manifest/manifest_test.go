package manifest_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

func TestValidatePath(t *testing.T) {
	cases := []struct {
		path string
		ok   bool
	}{
		{"flake.nix", true}, {"hosts/web/default.nix", true}, {"a..b", true},
		{"", false}, {"/etc/passwd", false}, {"../../etc/passwd", false}, {"a/../../b", false},
		{"a/./b", false}, {"a//b", false}, {"a/", false}, {".", false}, {"..", false},
		{".git/config", false}, {"x/.git/HEAD", false}, {`a\b`, false}, {"a\x00b", false},
	}
	for _, tc := range cases {
		if err := manifest.ValidatePath(tc.path); (err == nil) != tc.ok {
			t.Errorf("ValidatePath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
	}
}

func TestParse(t *testing.T) {
	sha := strings.Repeat("a", 64)
	good := func() manifest.Manifest {
		return manifest.Manifest{Format: 1, Host: "alpha", Version: "0123456789abcdef",
			Flake: manifest.Flake{Attr: "nixosConfigurations.alpha"},
			Files: []manifest.File{{Path: "flake.nix", Mode: 0o444, Size: 3, SHA256: sha}}}
	}
	cases := []struct {
		name   string
		mutate func(m *manifest.Manifest)
		raw    string
		err    string
	}{
		{name: "good", mutate: func(*manifest.Manifest) {}},
		{name: "newer format", mutate: func(m *manifest.Manifest) { m.Format = 3 }, err: "format 3 is not supported"},
		{name: "version not hex", mutate: func(m *manifest.Manifest) { m.Version = "current" }, err: "invalid version"},
		{name: "expected system not a store path", mutate: func(m *manifest.Manifest) { m.ExpectedToplevel = "/nix/store/../etc" }, err: "not a store path"},
		{name: "escaping path", mutate: func(m *manifest.Manifest) { m.Files[0].Path = "../../etc/passwd" }, err: "unsafe path"},
		{name: "absolute path", mutate: func(m *manifest.Manifest) { m.Files[0].Path = "/etc/passwd" }, err: "unsafe path"},
		{name: "version with slash", mutate: func(m *manifest.Manifest) { m.Version = "../x" }, err: "invalid version"},
		{name: "duplicate file", mutate: func(m *manifest.Manifest) { m.Files = append(m.Files, m.Files[0]) }, err: "listed twice"},
		{name: "negative size", mutate: func(m *manifest.Manifest) { m.Files[0].Size = -1 }, err: "negative size"},
		{name: "short hash", mutate: func(m *manifest.Manifest) { m.Files[0].SHA256 = "abc" }, err: "64 lowercase hex digits"},
		{name: "escaping secret", mutate: func(m *manifest.Manifest) {
			m.Secrets = []manifest.File{{Path: "../x", Size: 1, SHA256: sha}}
		}, err: "unsafe path"},
		{name: "not JSON", raw: "{", err: "invalid JSON"},
		{name: "oversized", raw: strings.Repeat(" ", manifest.MaxSize+1), err: "over the"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.raw)
			if tc.mutate != nil {
				m := good()
				tc.mutate(&m)
				data, _ = json.Marshal(m)
			}
			m, err := manifest.Parse(data)
			if tc.err == "" {
				if err != nil || m.Host != "alpha" {
					t.Fatalf("Parse = %v, %v", m, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Parse error %v, want %q", err, tc.err)
			}
		})
	}
}
