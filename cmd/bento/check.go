package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
)

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "check every host's bento settings against the fleet, without building",
		ArgsUsage: "[HOST|GLOB|@TAG]...",
		Description: "Evaluates the fleet like bento hosts and checks each deployed host: it evaluates,\n" +
			"its services.bento.host is its nixosConfigurations name (else its agent refuses every\n" +
			"publication), and its SFTP user is a name NixOS can create, not root, no other deployed\n" +
			"host's, and (when --host-group exists on this machine) a member of it. It also checks the\n" +
			"server's side: every secret under --secrets-dir/<host>/ is declared in the host's\n" +
			"services.bento.secrets and every declared one is there (with no HOST given, every\n" +
			"directory there is a host's), and a fetch-mode host has a --cache-key to fetch from\n" +
			"(bento keygen). Prints one line per problem with the fix; exits 1 when any host has one.",
		// No --keep-going: check always goes on, it reports every host.
		Flags:  append(fleetFlags()[:len(fleetFlags())-1], hostGroupFlag(), secretsDirFlag(), cacheFlags()[0]),
		Action: runCheck,
	}
}

func runCheck(c *cli.Context) error {
	secretsDir, err := guardSecretsNote(c, true)
	if err != nil {
		return err
	}
	if c.Int("eval-jobs") < 1 {
		return usageError("--eval-jobs must be at least 1")
	}
	ref, _ := flakeRef(c)
	evalOpts, err := evalOptions(c)
	if err != nil {
		return err
	}
	evalOpts.Ref, evalOpts.KeepGoing = ref, true
	f, err := eval.Discover(c.Context, nixRunner(c), evalOpts)
	var herrs eval.HostErrors
	if err != nil && (f == nil || !errors.As(err, &herrs)) {
		return failed(err)
	}
	problems := 0
	selected := map[string]bool{}
	hosts := f.Hosts
	if c.Args().Len() > 0 {
		// Hosts refused by discovery are not in f.Hosts: select among every name.
		all := append([]fleet.Host(nil), f.Hosts...)
		for _, he := range herrs {
			all = append(all, fleet.Host{Name: he.Host})
		}
		picked, err := fleet.Select(all, c.Args().Slice())
		if err != nil {
			return usageError("%w", err)
		}
		for _, h := range picked {
			selected[h.Name] = true
		}
		hosts = nil
		for _, h := range f.Hosts {
			if selected[h.Name] {
				hosts = append(hosts, h)
			}
		}
	}
	for _, he := range herrs {
		if len(selected) == 0 || selected[he.Host] {
			fmt.Fprintf(c.App.ErrWriter, "bento: %s\n", sanitizeLine(he.Error()))
			problems++
		}
	}
	bad, err := deploy.CheckUsers(f.Hosts, hosts, c.String("host-group"), deploy.SystemAccounts{})
	if err != nil {
		return failed(err)
	}
	for _, h := range deploy.Deployed(hosts) {
		if err := h.ValidateUser(); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "bento: host %s: %v\n", h.Name, err)
			problems++
		} else if err := bad[h.Name]; err != nil {
			fmt.Fprintf(c.App.ErrWriter, "bento: %v\n", err)
			problems++
		}
	}
	for _, line := range lintHosts(hosts, lintOptions{SecretsDir: secretsDir, CacheKey: c.String("cache-key")}) {
		fmt.Fprintf(c.App.ErrWriter, "bento: %s\n", sanitizeLine(line))
		problems++
	}
	if len(selected) == 0 {
		known := map[string]bool{}
		for _, h := range f.Hosts {
			known[h.Name] = true
		}
		for _, he := range herrs {
			known[he.Host] = true
		}
		orphans, err := orphanSecrets(secretsDir, known)
		if err != nil {
			return failed(err)
		}
		for _, line := range orphans {
			fmt.Fprintf(c.App.ErrWriter, "bento: %s\n", sanitizeLine(line))
			problems++
		}
	}
	if problems > 0 {
		return failed(fmt.Errorf("%d %s to fix (see above)", problems, plural(problems, "problem", "problems")))
	}
	n := len(deploy.Deployed(hosts))
	fmt.Fprintf(c.App.Writer, "bento: %d deployed %s checked: no problems\n", n, plural(n, "host", "hosts"))
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// sanitizeLine keeps a multi-line Nix error on indented lines.
func sanitizeLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n  ")
}
