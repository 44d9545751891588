package fleet_test

import (
	"strings"
	"testing"

	"github.com/bento-nix/bento/fleet"
)

func TestValidateName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"alpha", true}, {"web-1", true}, {"pi.home", true}, {"A_b", true}, {"0", true},
		{"", false}, {"-evil", false}, {".hidden", false}, {"..", false}, {"a/b", false},
		{"../etc", false}, {"a b", false}, {"héllo", false}, {"a\nb", false}, {strings.Repeat("a", 254), false},
	}
	for _, tc := range cases {
		err := fleet.ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "rename") {
			t.Errorf("ValidateName(%q): error %q does not say how to fix it", tc.name, err)
		}
	}
}

func TestAttrPaths(t *testing.T) {
	cases := []struct{ name, attr string }{
		{"alpha", "nixosConfigurations.alpha"},
		{"web-1", "nixosConfigurations.web-1"},
		{"pi.home", `nixosConfigurations."pi.home"`},
		{"0day", `nixosConfigurations."0day"`},
	}
	for _, tc := range cases {
		if got := fleet.ConfigAttr(tc.name); got != tc.attr {
			t.Errorf("ConfigAttr(%q) = %s, want %s", tc.name, got, tc.attr)
		}
	}
	if got := fleet.QuoteAttr(`a"${x}`); got != `"a\"\${x}"` {
		t.Errorf("QuoteAttr escapes badly: %s", got)
	}
}

func TestInstallable(t *testing.T) {
	flake := fleet.Host{Name: "pi.home", Layout: fleet.LayoutFlake, Ref: "/srv/fleet", Attr: fleet.ConfigAttr("pi.home")}
	if got := strings.Join(flake.Installable("config.system.build.toplevel"), " "); got != `/srv/fleet#nixosConfigurations."pi.home".config.system.build.toplevel` {
		t.Errorf("flake installable: %s", got)
	}
	classic := fleet.Host{Name: "old", Layout: fleet.LayoutClassic, ClassicConfig: "/srv/fleet/hosts/old/configuration.nix"}
	got := classic.Installable("config.system.build.toplevel")
	if len(got) != 3 || got[0] != "--impure" || got[1] != "--expr" ||
		got[2] != "(import <nixpkgs/nixos> { configuration = /srv/fleet/hosts/old/configuration.nix; }).config.system.build.toplevel" {
		t.Errorf("classic installable: %q", got)
	}
	odd := fleet.Host{Layout: fleet.LayoutClassic, ClassicConfig: "/srv/my fleet/hosts/x/configuration.nix"}
	if got := odd.Installable("")[2]; !strings.Contains(got, `(/. + "/srv/my fleet/hosts/x/configuration.nix")`) {
		t.Errorf("a path with a space must become a string coerced to a path: %s", got)
	}
}

func TestSelect(t *testing.T) {
	hosts := []fleet.Host{
		{Name: "db-1", Options: fleet.Options{Tags: []string{"db", "eu"}}},
		{Name: "web-1", Options: fleet.Options{Tags: []string{"web", "eu"}}},
		{Name: "web-2", Options: fleet.Options{Tags: []string{"web", "us"}}},
		{Name: "pi.home"},
	}
	cases := []struct {
		patterns []string
		want     string
		err      string
	}{
		{nil, "db-1,web-1,web-2,pi.home", ""},
		{[]string{"web-*"}, "web-1,web-2", ""},
		{[]string{"@eu"}, "db-1,web-1", ""},
		{[]string{"pi.home", "@us"}, "web-2,pi.home", ""},
		{[]string{"web-1", "web-*"}, "web-1,web-2", ""},
		{[]string{"mail"}, "", `host selection "mail" matches no host`},
		{[]string{"@nope"}, "", `host selection "@nope" matches no host`},
		{[]string{"web-["}, "", "bad glob pattern"},
	}
	for _, tc := range cases {
		got, err := fleet.Select(hosts, tc.patterns)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Select(%q): error %v, want %q", tc.patterns, err, tc.err)
			}
			continue
		}
		var names []string
		for _, h := range got {
			names = append(names, h.Name)
		}
		if err != nil || strings.Join(names, ",") != tc.want {
			t.Errorf("Select(%q) = %v, %v; want %s", tc.patterns, names, err, tc.want)
		}
	}
}
