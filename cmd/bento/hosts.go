package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/table"
)

func hostsCommand() *cli.Command {
	return &cli.Command{
		Name:      "hosts",
		Usage:     "list the fleet's hosts and their bento settings",
		ArgsUsage: "[HOST|GLOB|@TAG]...",
		Description: "Evaluates the fleet flake once and lists every nixosConfigurations entry:\n" +
			"managed (imports services.bento and enables it), disabled, or not managed.",
		Flags: append(fleetFlags(),
			&cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"},
		),
		Action: func(c *cli.Context) error {
			f, hosts, evalFailed, err := discover(c)
			if err != nil {
				return err
			}
			writeHostCache(c, f)
			if c.Bool("json") {
				err = printHostsJSON(c.App.Writer, f, hosts)
			} else {
				err = printHostsTable(c.App.Writer, hosts)
			}
			if err != nil {
				return err
			}
			if evalFailed {
				return failed(fmt.Errorf("some hosts could not be evaluated (see above)"))
			}
			return nil
		},
	}
}

// hostsDoc is bento hosts --json (docs/schema/hosts.json).
type hostsDoc struct {
	Flake  string       `json:"flake"`
	Layout fleet.Layout `json:"layout"`
	Hosts  []hostsRow   `json:"hosts"`
}

type hostsRow struct {
	fleet.Host
	State string `json:"state"`
}

func printHostsJSON(w io.Writer, f *fleet.Fleet, hosts []fleet.Host) error {
	out := hostsDoc{Flake: f.Ref, Layout: f.Layout, Hosts: []hostsRow{}}
	for _, h := range hosts {
		out.Hosts = append(out.Hosts, hostsRow{h, h.State()})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func printHostsTable(w io.Writer, hosts []fleet.Host) error {
	t := table.Table{Header: []string{"HOST", "ENABLED", "PLATFORM", "USER", "MODE", "TAGS"}}
	for _, h := range hosts {
		tags := strings.Join(h.Options.Tags, ",")
		t.Rows = append(t.Rows, []string{h.Name, enabled(h), dash(h.System), h.Options.User, h.Options.Mode, dash(tags)})
	}
	return t.Write(w)
}

// enabled is the ENABLED column: whether bento deploys the host, and for
// a host without the module, that there is nothing to enable.
func enabled(h fleet.Host) string {
	switch {
	case !h.Managed:
		return "no module"
	case !h.Enable:
		return "no"
	}
	return "yes"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
