package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// nixOptions are the settings every realisation gets: the configured
// substituters and keys on top of Nix's own, and the negative narinfo
// cache TTL (0 by default, so a path published a minute after Nix last
// asked for it is not taken as missing for an hour).
func (c *Config) nixOptions() []string {
	args := []string{"--option", "narinfo-cache-negative-ttl", strconv.Itoa(c.NarinfoCacheNegativeTTL)}
	if len(c.Substituters) > 0 {
		args = append(args, "--option", "extra-substituters", strings.Join(c.Substituters, " "))
	}
	if len(c.TrustedPublicKeys) > 0 {
		args = append(args, "--option", "extra-trusted-public-keys", strings.Join(c.TrustedPublicKeys, " "))
	}
	return args
}

// installable names the host's toplevel in the tree at dir.
func installable(host string, m *manifest.Manifest, dir string) []string {
	h := fleet.Host{Name: host, Layout: fleet.LayoutFlake, Ref: "path:" + dir, Attr: m.Flake.Attr}
	if h.Attr == "" {
		h.Attr = fleet.ConfigAttr(host)
	}
	if m.Flake.Layout == string(fleet.LayoutClassic) {
		h.Layout = fleet.LayoutClassic
		h.ClassicConfig = filepath.Join(dir, "configuration.nix")
	}
	return h.Installable("config.system.build.toplevel")
}

// build evaluates and builds the host's toplevel from the local tree and
// returns its out path. The full build output goes to log.
func build(ctx context.Context, r *nix.Runner, c *Config, m *manifest.Manifest, dir string, writeLock bool, log io.Writer) (string, error) {
	args := []string{"build", "--no-link", "--json", "--print-build-logs"}
	if !writeLock && m.Flake.Layout != string(fleet.LayoutClassic) {
		// The tree must stay what the server published.
		args = append(args, "--no-write-lock-file")
	}
	args = append(args, c.nixOptions()...)
	args = append(args, installable(c.Host, m, dir)...)
	out, err := r.Run(ctx, nix.Cmd{Args: args, Log: log})
	if err != nil {
		return "", err
	}
	var res []struct {
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res) != 1 || res[0].Outputs["out"] == "" {
		return "", fmt.Errorf("nix build printed %q, not one out path", strings.TrimSpace(string(out)))
	}
	return res[0].Outputs["out"], nil
}

// fetch realises the expected toplevel from the substituters, evaluating
// nothing: for hosts too small to evaluate NixOS.
func fetch(ctx context.Context, r *nix.Runner, c *Config, m *manifest.Manifest, log io.Writer) (string, error) {
	p := m.ExpectedToplevel
	if p == "" {
		return "", fmt.Errorf("version %s was published without a server build (no expectedToplevel), and a host in fetch mode builds nothing: deploy it with a build", m.Version)
	}
	// The manifest's parser checked the shape only (it cannot know this
	// host's store directory): anything not right under the real store
	// directory is refused before nix-store sees it, and so is a
	// derivation, which nix-store --realise would build.
	// --extra-experimental-features: a fetch-mode host needs no flakes and
	// may not have nix-command on.
	out, err := r.Run(ctx, nix.Cmd{Args: []string{"--extra-experimental-features", "nix-command", "eval", "--raw", "--expr", "builtins.storeDir"}})
	if err != nil {
		return "", fmt.Errorf("ask nix for its store directory: %w", err)
	}
	if err := manifest.CheckStorePath(p, strings.TrimSpace(string(out))); err != nil {
		return "", fmt.Errorf("expectedToplevel: %w", err)
	}
	if strings.HasSuffix(p, ".drv") {
		return "", fmt.Errorf("expectedToplevel %s is a derivation, not a system: a host in fetch mode builds nothing", p)
	}
	args := append(append([]string{"--realise"}, c.nixOptions()...), "--", p)
	if _, err := r.Run(ctx, nix.Cmd{Tool: "nix-store", Args: args, Log: log}); err != nil {
		return "", err
	}
	return p, nil
}

// flakeUpdate updates the inputs of the flake at dir (self-update).
func flakeUpdate(ctx context.Context, r *nix.Runner, c *Config, dir string, log io.Writer) error {
	args := append([]string{"flake", "update"}, c.nixOptions()...)
	args = append(args, "path:"+dir)
	_, err := r.Run(ctx, nix.Cmd{Args: args, Dir: dir, Log: log})
	return err
}
