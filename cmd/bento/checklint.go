package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/secrets"
)

// lintOptions is what the fleet lints compare the hosts' settings with:
// the server's side of the fleet.
type lintOptions struct {
	// SecretsDir is the secrets directory (<dir>/<host>/<name>); "" when
	// there is none.
	SecretsDir string
	// CacheKey is the fleet's signing key file.
	CacheKey string
	// NoCache is deploy's --no-cache: no host gets a cache, key or not.
	NoCache bool
	// DeployOnly leaves out the lints deploy already warns about
	// itself (declared secrets that are not published).
	DeployOnly bool
}

// lintHosts checks what bento check adds to the users and names checks:
// every deployed host of hosts gets what it declares from the server, and
// nothing it does not. One line per finding, each naming the fix.
func lintHosts(hosts []fleet.Host, o lintOptions) []string {
	var out []string
	keyMissing := cacheKeyMissing(o)
	for _, h := range deploy.Deployed(hosts) {
		for _, p := range h.Options.Placeholders {
			out = append(out, placeholder(h.Name, p))
		}
		if h.Options.Mode == "fetch" && keyMissing != "" {
			out = append(out, fmt.Sprintf("host %s: services.bento.mode is \"fetch\", but %s", h.Name, keyMissing))
		}
		out = append(out, lintSecrets(h, o)...)
	}
	return out
}

// cacheKeyMissing says why deploy publishes no binary cache for a host
// in fetch mode to fetch from; "" when it does.
func cacheKeyMissing(o lintOptions) string {
	if o.NoCache {
		return "deploy runs with --no-cache, so the server publishes no binary cache and the host has nothing to fetch its system from: deploy without --no-cache (after bento keygen), or set services.bento.mode = \"build\""
	}
	if _, err := os.Stat(o.CacheKey); o.CacheKey == "" || errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("the server has no cache key (%s does not exist), so deploy publishes no binary cache and the host has nothing to fetch its system from: run bento keygen (or pass --cache-key where the key is), or set services.bento.mode = \"build\"", o.CacheKey)
	}
	return ""
}

// lintSecrets compares the secrets published for h with those it
// declares.
func lintSecrets(h fleet.Host, o lintOptions) []string {
	files, err := secrets.Collect(o.SecretsDir, h.Name)
	if err != nil {
		return []string{fmt.Sprintf("host %s: %v", h.Name, err)}
	}
	var out []string
	for _, f := range files {
		if name := secrets.Name(f.Path); !slices.Contains(h.Options.Secrets, name) {
			out = append(out, fmt.Sprintf("host %s: %s is published, but the host declares no services.bento.secrets.%s, so its agent refuses to install it: declare it (path, owner, group, mode) or remove the file", h.Name, filepath.Join(o.SecretsDir, h.Name, f.Path), name))
		}
	}
	if o.DeployOnly {
		return out
	}
	for _, name := range h.Options.Secrets {
		if !slices.ContainsFunc(files, func(f manifest.File) bool { return secrets.Name(f.Path) == name }) {
			out = append(out, unpublishedSecret(o.SecretsDir, h.Name, name))
		}
	}
	return out
}

// placeholder is the finding for an option left null as the template has
// it (nix flake init -t github:bento-nix/bento).
func placeholder(host, option string) string {
	switch option {
	case "serverHostKey":
		return fmt.Sprintf("host %s: services.bento.serverHostKey is null, as the template leaves it, so the host's build fails (bento never trusts a server key on first use): set it to the server's public host key (cat /etc/ssh/ssh_host_ed25519_key.pub on the server)", host)
	case "hostPublicKey":
		return fmt.Sprintf("host %s: services.bento.hostPublicKey is null, as the template leaves it, so the server authorizes no key for the host's SFTP user and its agent cannot log in: set it to the host's public host key (cat /etc/ssh/ssh_host_ed25519_key.pub on the host), or list the key in services.bento-server.hosts.%s.publicKeys on the server", host, host)
	}
	return fmt.Sprintf("host %s: services.bento.%s is null, as the template leaves it: set it", host, option)
}

// unpublishedSecret is the finding for a secret host declares that the
// secrets directory dir lacks.
func unpublishedSecret(dir, host, name string) string {
	if dir == "" {
		return fmt.Sprintf("host %s: services.bento.secrets.%s is declared, but a remote flake has no secrets directory, so the host never gets it: pass --secrets-dir with %s/%s in it, or remove the declaration", host, name, host, name)
	}
	return fmt.Sprintf("host %s: services.bento.secrets.%s is declared, but %s does not exist, so the host never gets it: add the file (or %s.age), or remove the declaration", host, name, filepath.Join(dir, host, name), name)
}

// lintBeforeDeploy makes deploy run check's lints on the hosts it
// selected, right after discovery, as warnings: a deploy that publishes
// what it can is still worth doing, and the agents report the rest.
// Those deploy warns about itself (declared secrets it lacks) are left out.
func lintBeforeDeploy(c *cli.Context, opts *deploy.Options) {
	discover := opts.Discover
	lo := lintOptions{SecretsDir: opts.SecretsDir, CacheKey: c.String("cache-key"), NoCache: opts.Cache == nil, DeployOnly: true}
	ew := errWriter(c)
	opts.Discover = func(ctx context.Context) (*fleet.Fleet, []fleet.Host, bool, error) {
		f, selected, evalFailed, err := discover(ctx)
		if err == nil {
			for _, line := range lintHosts(selected, lo) {
				fmt.Fprintln(ew, "bento: warning:", sanitizeLine(line))
			}
		}
		return f, selected, evalFailed, err
	}
}

// orphanSecrets finds the directories of the secrets directory dir that
// belong to no host of the fleet (known lists every host discovery saw,
// evaluated or not): deploy never publishes them, which is most often a
// host renamed or a typo.
func orphanSecrets(dir string, known map[string]bool) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secrets directory: %w", err)
	}
	var out []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !e.IsDir() || known[n] {
			continue
		}
		p := filepath.Join(dir, n)
		if fleet.ValidateName(n) != nil {
			p = fmt.Sprintf("%q", p) // no host name: keep control characters off the terminal
		}
		out = append(out, fmt.Sprintf("%s holds secrets for %q, which is no host of the fleet, so deploy never publishes them: rename it to the host's nixosConfigurations name, or remove it", p, n))
	}
	return out, nil
}
