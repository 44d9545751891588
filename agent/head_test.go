package agent

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

func TestParseHead(t *testing.T) {
	m := manifest.Manifest{Format: 1, Host: "alpha", Version: "0123abcd", PublishedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		ExpectedToplevel: "/nix/store/aaaa-nixos-system-alpha", Flake: manifest.Flake{Attr: "nixosConfigurations.alpha"}}
	for i := 0; i < 500; i++ {
		m.Files = append(m.Files, manifest.File{Path: "hosts/x.nix", Mode: 0o644, Size: 1, SHA256: "00"})
	}
	compact, _ := json.Marshal(m)
	indented, _ := json.MarshalIndent(m, "", "  ")
	noExpected := m
	noExpected.ExpectedToplevel = ""
	noExp, _ := json.Marshal(noExpected)
	want := manifestHead{Format: 1, Host: "alpha", Version: "0123abcd", Expected: "/nix/store/aaaa-nixos-system-alpha"}
	cases := []struct {
		name   string
		prefix []byte
		ok     bool
		want   manifestHead
	}{
		{"compact, first 768 bytes", compact[:768], true, want},
		{"indented, first 768 bytes", indented[:768], true, want},
		{"whole file", compact, true, want},
		{"no expected toplevel", noExp[:768], true, manifestHead{Format: 1, Host: "alpha", Version: "0123abcd"}},
		{"cut before files", compact[:40], false, manifestHead{}},
		{"files first: read everything", []byte(`{"files":[{"path":"a"}],"version":"x"}`), false, manifestHead{}},
		{"not an object", []byte(`[1,2]`), false, manifestHead{}},
		{"empty", nil, false, manifestHead{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseHead(tc.prefix)
			if ok != tc.ok || (ok && got != tc.want) {
				t.Errorf("parseHead = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
