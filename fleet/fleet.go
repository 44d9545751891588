// Package fleet holds what bento knows about a fleet once it has been
// discovered: its hosts, their bento options, and how to address each one
// in Nix. Discovery (package eval) fills it; every later stage reads it.
package fleet

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
)

// Layout says how the fleet's hosts are described.
type Layout string

const (
	// LayoutFlake is one flake whose nixosConfigurations are the hosts.
	LayoutFlake Layout = "flake"
	// LayoutClassic is the original bento layout: hosts/<name>/configuration.nix,
	// evaluated with <nixpkgs/nixos> from NIX_PATH.
	LayoutClassic Layout = "classic"
)

// Fleet is the result of discovery.
type Fleet struct {
	// Ref is the flake reference as given (flake layout) or the directory
	// holding hosts/ (classic layout).
	Ref string `json:"ref"`
	// Dir is the local directory of the fleet, when it is one.
	Dir    string `json:"dir,omitempty"`
	Layout Layout `json:"layout"`
	Hosts  []Host `json:"hosts"`
}

// Host is one nixosConfigurations entry (or one classic host directory).
type Host struct {
	// Name is the nixosConfigurations attribute; JSON "host", as in every
	// bento document (it was "name" before issue 17).
	Name string `json:"host"`
	// Managed is true when the host imports the bento client module
	// (config.services.bento exists).
	Managed bool `json:"managed"`
	// Enable is services.bento.enable: only managed, enabled hosts are deployed.
	Enable bool `json:"enable"`
	// System is the host's platform, e.g. "x86_64-linux"; empty if unknown.
	System   string `json:"system,omitempty"`
	HostName string `json:"hostName,omitempty"`
	// Attr is the Nix attribute path of the host inside the flake, quoted
	// where needed: nixosConfigurations."pi.home".
	Attr string `json:"attr"`
	// Layout and Ref repeat the fleet's, so a Host alone can be built.
	Layout Layout `json:"layout"`
	Ref    string `json:"-"`
	// ClassicConfig is the configuration.nix of a classic host.
	ClassicConfig string  `json:"classicConfig,omitempty"`
	Options       Options `json:"options"`
}

// Options are the host's services.bento settings that the server reads.
// Defaults apply to hosts that do not import the module.
type Options struct {
	// Host is the name the host's agent calls itself (services.bento.host,
	// or networking.hostName for a module without that option); it must
	// be the host's Name, or the agent refuses every publication.
	Host   string   `json:"host,omitempty"`
	User   string   `json:"user"`
	Server string   `json:"server,omitempty"`
	Port   int      `json:"port,omitempty"`
	Mode   string   `json:"mode"`
	Tags   []string `json:"tags"`
	// Operation is switch, boot or test.
	Operation string `json:"operation"`
	// Interval is the client's poll schedule (systemd OnCalendar), used by
	// status to decide when a host is stale.
	Interval string `json:"interval,omitempty"`
	// Secrets are the names of the secrets the host declares.
	Secrets []string `json:"secrets,omitempty"`
	// Placeholders are the services.bento options left null as the
	// template has them (serverHostKey, hostPublicKey): bento check
	// names them before a build fails on them.
	Placeholders []string `json:"placeholders,omitempty"`
	// Wave is services.bento.rollout.wave: when a rollout (bento rollout
	// start) publishes to the host; 0 are the canaries, DefaultWave when
	// the module does not set it.
	Wave int `json:"wave"`
}

// DefaultWave is services.bento.rollout.wave's default: after the
// canaries (wave 0).
const DefaultWave = 1

// Deployed reports whether bento publishes this host.
func (h Host) Deployed() bool { return h.Managed && h.Enable }

// CheckAgentHost refuses a deployed host whose agent would call itself
// by another name than the one the server publishes it under (its
// nixosConfigurations attribute): that agent would refuse every
// publication, on every tick. The message names both and the fix.
func (h Host) CheckAgentHost() error {
	if !h.Deployed() || h.Options.Host == "" || h.Options.Host == h.Name {
		return nil
	}
	return fmt.Errorf("services.bento.host is %q, but bento publishes this host as %s, so its agent would refuse every publication: add services.bento.host = %s; to the host's configuration",
		h.Options.Host, h.Attr, nixStringLit(h.Name))
}

// nixStringLit quotes s as a Nix string (host names never need escapes,
// but a message must never mislead).
func nixStringLit(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `${`, `\${`)
	return `"` + r.Replace(s) + `"`
}

// State describes why a host is or is not deployed, for listings.
func (h Host) State() string {
	switch {
	case !h.Managed:
		return "not-managed"
	case !h.Enable:
		return "disabled"
	default:
		return "managed"
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidateName checks that a host name is safe to use as a directory and a
// user name. ".." and names with slashes never pass.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || len(name) > 253 {
		return fmt.Errorf("invalid host name %q: host names must match %s (they become directory and user names); rename the nixosConfigurations entry", name, nameRE.String())
	}
	return nil
}

var bareAttrRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_'-]*$`)

// QuoteAttr quotes one attribute name for use in a Nix attribute path.
func QuoteAttr(name string) string {
	if bareAttrRE.MatchString(name) {
		return name
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `${`, `\${`)
	return `"` + r.Replace(name) + `"`
}

// ConfigAttr is the attribute path of a host's configuration in a flake.
func ConfigAttr(name string) string {
	return "nixosConfigurations." + QuoteAttr(name)
}

// Installable returns the nix arguments that name the attribute sub (e.g.
// "config.system.build.toplevel") of this host, for nix build or nix eval.
func (h Host) Installable(sub string) []string {
	if h.Layout == LayoutClassic {
		expr := fmt.Sprintf("(import <nixpkgs/nixos> { configuration = %s; })", nixPath(h.ClassicConfig))
		if sub != "" {
			expr += "." + sub
		}
		return []string{"--impure", "--expr", expr}
	}
	attr := h.Attr
	if sub != "" {
		attr += "." + sub
	}
	return []string{h.Ref + "#" + attr}
}

// nixPath renders an absolute path as a Nix path literal, or a string
// coerced to a path when it contains characters a literal cannot hold.
func nixPath(p string) string {
	if regexp.MustCompile(`^/[A-Za-z0-9._/+-]+$`).MatchString(p) {
		return p
	}
	return fmt.Sprintf("(/. + %q)", p)
}

// Select returns the hosts matched by patterns: exact names, shell globs
// (web-*) and @tag. No pattern selects every host. A pattern that matches
// nothing is an error, so a typo never silently selects nothing.
func Select(hosts []Host, patterns []string) ([]Host, error) {
	if len(patterns) == 0 {
		return hosts, nil
	}
	picked := make(map[string]bool)
	for _, p := range patterns {
		n := 0
		for _, h := range hosts {
			ok, err := h.matches(p)
			if err != nil {
				return nil, err
			}
			if ok {
				picked[h.Name] = true
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("host selection %q matches no host (known hosts: %s)", p, names(hosts))
		}
	}
	var out []Host
	for _, h := range hosts {
		if picked[h.Name] {
			out = append(out, h)
		}
	}
	return out, nil
}

func (h Host) matches(pattern string) (bool, error) {
	if tag, ok := strings.CutPrefix(pattern, "@"); ok {
		for _, t := range h.Options.Tags {
			if t == tag {
				return true, nil
			}
		}
		return false, nil
	}
	ok, err := path.Match(pattern, h.Name)
	if err != nil {
		return false, fmt.Errorf("host selection %q: bad glob pattern: %w", pattern, err)
	}
	return ok, nil
}

func names(hosts []Host) string {
	var ns []string
	for _, h := range hosts {
		ns = append(ns, h.Name)
	}
	sort.Strings(ns)
	if len(ns) > 10 {
		ns = append(ns[:10], fmt.Sprintf("… %d more", len(ns)-10))
	}
	if len(ns) == 0 {
		return "none"
	}
	return strings.Join(ns, ", ")
}

var userRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// MaxUserLen is the longest user name NixOS creates ("longer than 31
// characters" aborts users-groups.nix), so the longest bento allows.
const MaxUserLen = 31

// ValidateUser checks a host's SFTP user name (services.bento.user) the way
// the server module's assertion does.
func (h Host) ValidateUser() error {
	u := h.Options.User
	if !userRE.MatchString(u) || len(u) > MaxUserLen {
		return fmt.Errorf("services.bento.user %q is not a usable user name (letters, digits, '.', '_', '-', at most %d characters: NixOS refuses longer ones): set services.bento.user to a shorter name on that host", u, MaxUserLen)
	}
	return nil
}
