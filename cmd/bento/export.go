package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/bundle"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
)

// The commands of offline bundles (package bundle): export writes them,
// the agent's apply-bundle applies one, import-reports brings the
// reports back.

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write an offline bundle per host (for a USB stick): its signed publication, objects, secrets and binary cache",
		ArgsUsage: "HOST...",
		Description: "Copies each host's live publication from its chroot into DIR/<host>/, the layout\n" +
			"the agent reads over SFTP: manifest.json (as published, signed), the objects it\n" +
			"names (each checked against its sha256), its secrets and the binary cache of its\n" +
			"closure. On the host, \"bento agent apply-bundle DIR/<host>\" applies it like a\n" +
			"tick and writes its report into the bundle; \"bento import-reports\" on the server\n" +
			"records it. Secrets are copied as published: age-encrypted ones are ciphertext, plain\n" +
			"ones are refused unless --include-plain-secrets. An unsigned publication is refused\n" +
			"unless --allow-unsigned (hosts that pin a publication key would refuse it anyway).\n" +
			"Exits 1 when any host could not be exported.",
		Flags: []cli.Flag{
			chrootRootFlag(),
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "the directory that receives one bundle directory per host"},
			&cli.BoolFlag{Name: "include-plain-secrets", Usage: "copy secrets that are not age-encrypted too (they are then in clear text on the medium)"},
			&cli.BoolFlag{Name: "allow-unsigned", Usage: "export a publication that is not signed (bento deploy --publication-key)"},
		},
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				return usageError("export needs the hosts to export (bento export alpha beta --output /media/usb)")
			}
			out := c.String("output")
			if err := os.MkdirAll(out, 0o755); err != nil {
				return usageError("--output: %w", err)
			}
			opts := bundle.ExportOptions{PlainSecrets: c.Bool("include-plain-secrets"), Unsigned: c.Bool("allow-unsigned")}
			var errs []error
			for _, host := range c.Args().Slice() {
				sum, err := bundle.Export(c.Context, c.String("chroot-root"), host, out, opts)
				if err != nil {
					errs = append(errs, fmt.Errorf("host %s: export: %w", host, err))
					continue
				}
				fmt.Fprintf(c.App.Writer, "bento: %s: bundle %s (version %s, sequence %d, %d objects, %d secrets, %d cache files, %d bytes)\n",
					host, sum.Dir, sum.Version, sum.Sequence, sum.Objects, sum.Secrets, sum.CacheFiles, sum.Bytes)
			}
			if len(errs) > 0 {
				return failed(errors.Join(errs...))
			}
			return nil
		},
	}
}

func agentApplyBundleCommand() *cli.Command {
	return &cli.Command{
		Name:      "apply-bundle",
		Usage:     "apply an offline bundle (bento export) as a tick would, without the server",
		ArgsUsage: "DIR",
		Description: "Reads DIR (one host's bundle) instead of connecting to the server, and does what\n" +
			"\"bento agent run\" does with a publication: verify it (services.bento.publicationKey,\n" +
			"sequence, age), fetch, build, switch with the guard, roll back, reboot per policy.\n" +
			"The report goes into DIR/reports/ (or --report DIR2) for bento import-reports.\n" +
			"Exits like bento agent run.",
		Flags: append(append(agentConfigFlags(),
			&cli.StringFlag{Name: "report", Usage: "write the report (status.json, logs/) here instead of into the bundle's reports/ (a read-only medium)"},
		), tickFlags()...),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError("apply-bundle takes one bundle directory (got %d arguments)", c.NArg())
			}
			cfg, err := agentConfig(c)
			if err != nil {
				return err
			}
			return runAgent(c, cfg, agent.Options{
				Out:       c.App.ErrWriter,
				LockWait:  lockWait(c),
				RetryNow:  c.Bool("now"),
				Bundle:    c.Args().First(),
				ReportDir: c.String("report"),
			})
		},
	}
}

func importReportsCommand() *cli.Command {
	return &cli.Command{
		Name:      "import-reports",
		Usage:     "record the reports hosts wrote into offline bundles, where bento status reads them",
		ArgsUsage: "BUNDLE...",
		Description: "For each bundle directory (bento export, then bento agent apply-bundle on the\n" +
			"host), reads reports/status.json and its log, checks them as any report a host\n" +
			"writes (size, host name: it must be the bundle's host, and the bundle's manifest\n" +
			"one the server published for that host) and puts them into that\n" +
			"host's chroot reports/. A report older than the one the chroot holds is skipped.\n" +
			"Exits 1 when any bundle could not be imported.",
		Flags: []cli.Flag{chrootRootFlag(),
			&cli.StringFlag{Name: "publication-key", Value: defaultPublicationKey, EnvVars: []string{"BENTO_PUBLICATION_KEY"},
				Usage: "the key that signs the manifests: a bundle whose manifest is no longer its host's live one is accepted when this key signed it"},
		},
		Action: func(c *cli.Context) error {
			if !c.Args().Present() {
				return usageError("import-reports needs the bundle directories to import")
			}
			var opts bundle.ImportOptions
			key, err := publicationSigningKey(c)
			if err != nil {
				return err
			}
			if key != nil {
				opts.Keys = []manifest.PublicationKey{key.Public()}
			}
			var errs []error
			for _, dir := range c.Args().Slice() {
				done, err := bundle.ImportReport(c.String("chroot-root"), dir, opts)
				if err != nil {
					errs = append(errs, fmt.Errorf("bundle %s: %w", dir, err))
					continue
				}
				fmt.Fprintln(c.App.Writer, "bento: "+importedLine(done))
			}
			if len(errs) > 0 {
				return failed(errors.Join(errs...))
			}
			return nil
		},
	}
}

// reportTimeLayout is how import-reports prints a report's time.
const reportTimeLayout = "2006-01-02 15:04:05Z07:00"

// importedLine says what import-reports did with a bundle's report.
func importedLine(done bundle.Imported) string {
	rep := done.Report
	if done.Newer != nil {
		return fmt.Sprintf("%s: skipped the bundle's report of %s: the server has a newer one (%s)", done.Host, rep.FinishedAt.Format(reportTimeLayout), done.Newer.FinishedAt.Format(reportTimeLayout))
	}
	// Result and version are the host's words, not checked by the import.
	return fmt.Sprintf("%s: imported the report of %s (%s, version %s)", done.Host, rep.FinishedAt.Format(reportTimeLayout), termsafe.Line(string(rep.Result)), termsafe.Line(rep.AttemptedVersion))
}
