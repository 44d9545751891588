package main

import (
	"errors"
	"fmt"
	"io"
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
	f, herrs, err := discoverForCheck(c)
	if err != nil {
		return err
	}
	hosts, selected, err := selectForCheck(f, herrs, c.Args().Slice())
	if err != nil {
		return err
	}
	r := &checkReport{w: c.App.ErrWriter}
	r.discoveryErrors(herrs, selected)
	if err := r.users(f.Hosts, hosts, c.String("host-group")); err != nil {
		return failed(err)
	}
	for _, line := range lintHosts(hosts, lintOptions{SecretsDir: secretsDir, CacheKey: c.String("cache-key")}) {
		r.add(sanitizeLine(line))
	}
	if len(selected) == 0 {
		// Only a check of the whole fleet knows every host: with some
		// selected, every other host's secrets would look orphaned.
		if err := r.orphans(secretsDir, f, herrs); err != nil {
			return failed(err)
		}
	}
	if r.problems > 0 {
		return failed(fmt.Errorf("%d %s to fix (see above)", r.problems, plural(r.problems, "problem", "problems")))
	}
	n := len(deploy.Deployed(hosts))
	fmt.Fprintf(c.App.Writer, "bento: %d deployed %s checked: no problems\n", n, plural(n, "host", "hosts"))
	return nil
}

// discoverForCheck evaluates the fleet with --keep-going on: a host that
// does not evaluate is one more problem to report, not the end of the
// check.
func discoverForCheck(c *cli.Context) (*fleet.Fleet, eval.HostErrors, error) {
	if c.Int("eval-jobs") < 1 {
		return nil, nil, usageError("--eval-jobs must be at least 1")
	}
	ref, _ := flakeRef(c)
	evalOpts, err := evalOptions(c)
	if err != nil {
		return nil, nil, err
	}
	evalOpts.Ref, evalOpts.KeepGoing = ref, true
	f, err := eval.Discover(c.Context, nixRunner(c), evalOpts)
	var herrs eval.HostErrors
	if err != nil && (f == nil || !errors.As(err, &herrs)) {
		return nil, nil, failed(err)
	}
	return f, herrs, nil
}

// selectForCheck picks the hosts the arguments name (all of them when
// none is given). selected is empty when every host is checked.
func selectForCheck(f *fleet.Fleet, herrs eval.HostErrors, args []string) (hosts []fleet.Host, selected map[string]bool, err error) {
	selected = map[string]bool{}
	if len(args) == 0 {
		return f.Hosts, selected, nil
	}
	// Hosts refused by discovery are not in f.Hosts: select among every name.
	all := append([]fleet.Host(nil), f.Hosts...)
	for _, he := range herrs {
		all = append(all, fleet.Host{Name: he.Host})
	}
	picked, err := fleet.Select(all, args)
	if err != nil {
		return nil, nil, usageError("%w", err)
	}
	for _, h := range picked {
		selected[h.Name] = true
	}
	for _, h := range f.Hosts {
		if selected[h.Name] {
			hosts = append(hosts, h)
		}
	}
	return hosts, selected, nil
}

// checkReport prints each problem as it is found, so an error later (an
// unreadable secrets directory) still leaves those found before it.
type checkReport struct {
	w        io.Writer
	problems int
}

func (r *checkReport) add(line string) {
	fmt.Fprintf(r.w, "bento: %s\n", line)
	r.problems++
}

func (r *checkReport) discoveryErrors(herrs eval.HostErrors, selected map[string]bool) {
	for _, he := range herrs {
		if len(selected) == 0 || selected[he.Host] {
			r.add(sanitizeLine(he.Error()))
		}
	}
}

// users checks the SFTP users of the selected hosts against every host:
// a user shared with an unselected host is still a problem.
func (r *checkReport) users(all, hosts []fleet.Host, hostGroup string) error {
	bad, err := deploy.CheckUsers(all, hosts, hostGroup, deploy.SystemAccounts{})
	if err != nil {
		return err
	}
	for _, h := range deploy.Deployed(hosts) {
		if err := h.ValidateUser(); err != nil {
			r.add(fmt.Sprintf("host %s: %v", h.Name, err))
		} else if err := bad[h.Name]; err != nil {
			r.add(fmt.Sprintf("%v", err))
		}
	}
	return nil
}

// orphans reports secrets directories of no host, counting a host that
// failed to evaluate as known (its secrets are not orphaned).
func (r *checkReport) orphans(secretsDir string, f *fleet.Fleet, herrs eval.HostErrors) error {
	known := map[string]bool{}
	for _, h := range f.Hosts {
		known[h.Name] = true
	}
	for _, he := range herrs {
		known[he.Host] = true
	}
	lines, err := orphanSecrets(secretsDir, known)
	if err != nil {
		return err
	}
	for _, line := range lines {
		r.add(sanitizeLine(line))
	}
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
