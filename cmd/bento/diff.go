package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/status"
)

func diffCommand() *cli.Command {
	return &cli.Command{
		Name:      "diff",
		Usage:     "show how the system a host runs differs from the one the server built",
		ArgsUsage: "HOST",
		Description: "Runs nix store diff-closures between the system the host reported (its\n" +
			"current system; for operation boot, the one it will boot) and the server's last\n" +
			"build of it (its build record under --state-dir, else the manifest's expected\n" +
			"system). Both must be in this machine's Nix store: a system the host built itself\n" +
			"is not, and bento diff says so. --previous compares the server's previous build\n" +
			"with its last one instead: what the next deploy changes.",
		Flags: []cli.Flag{
			chrootRootFlag(),
			statusStateDirFlag(),
			&cli.BoolFlag{Name: "previous", Usage: "compare the server's previous build of the host with its last one"},
		},
		Action: runDiff,
	}
}

func runDiff(c *cli.Context) error {
	if c.Args().Len() != 1 {
		return usageError("say which host: bento diff HOST (bento status lists the hosts)")
	}
	host := c.Args().First()
	d, err := diffSides(c, host)
	if err != nil {
		return err
	}
	if err := d.Verify(c.Context, nixRunner(c)); err != nil {
		if c.Context.Err() != nil {
			return fmt.Errorf("diff interrupted: %w", c.Context.Err())
		}
		return failed(err)
	}
	w := c.App.Writer
	if d.Same() {
		fmt.Fprintf(w, "host %s: %s and %s are the same system, %s: nothing differs\n", host, d.FromLabel, d.ToLabel, d.From)
		return nil
	}
	fmt.Fprintf(w, "host %s\n  from %s (%s)\n  to   %s (%s)\n", host, d.From, d.FromLabel, d.To, d.ToLabel)
	if err := status.Diff(c.Context, nixRunner(c), d, w); err != nil {
		if c.Context.Err() != nil {
			// Ctrl-C: exit 130, like every bento command.
			return fmt.Errorf("diff interrupted: %w", c.Context.Err())
		}
		return failed(err)
	}
	return nil
}

// diffSides finds the two systems to compare (status.DiffTargets), its
// errors as the exits they give.
func diffSides(c *cli.Context, host string) (status.DiffSides, error) {
	builds, err := statusBuilds(c.String("state-dir"))
	if err != nil {
		return status.DiffSides{}, failed(fmt.Errorf("host %s: %w", host, err))
	}
	var build *status.Build
	if b, ok := builds[host]; ok {
		build = &b
	}
	d, err := status.DiffTargets(c.String("chroot-root"), host, build, c.Bool("previous"))
	if err != nil {
		var ue *status.UsageError
		if errors.As(err, &ue) {
			return d, usageError("%w", err)
		}
		return d, failed(err)
	}
	return d, nil
}
