package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/logs"
)

func logsCommand() *cli.Command {
	return &cli.Command{
		Name:      "logs",
		Usage:     "print a host's latest build and switch log (or a chosen one), decompressed",
		ArgsUsage: "HOST [NAME]",
		Description: "Logs are what the host uploaded to <chroot-root>/<host>/reports/logs/. The latest is\n" +
			"the one its last report names. NAME may be the start of a log's name (a version)\n" +
			"when that is unique. --follow keeps printing what is added, and each newer log.\n" +
			"Control characters and escape sequences are removed (on a terminal, colours are\n" +
			"kept); --raw prints the bytes as the host uploaded them. At most --max-bytes of a\n" +
			"log are printed, decompressed. A host whose reports/ is over --reports-max-bytes or\n" +
			"--reports-max-files has its oldest logs removed first; beyond that, nothing is read.",
		Flags: append([]cli.Flag{
			chrootRootFlag(),
			&cli.BoolFlag{Name: "follow", Aliases: []string{"F"}, Usage: "keep printing what the host adds (a tick under way as it runs), until Ctrl-C; -F, as -f is --flake in every command"},
			&cli.BoolFlag{Name: "list", Aliases: []string{"l"}, Usage: "list the host's logs instead"},
			&cli.BoolFlag{Name: "raw", Usage: "print the log as the host uploaded it (decompressed), control sequences and all: only into a file or a pager that filters them, never to a terminal"},
			&cli.Int64Flag{Name: "max-bytes", Value: logs.DefaultMaxBytes, Usage: "print at most this many bytes of a log, decompressed (a small gzip file may inflate to gigabytes)"},
			&cli.DurationFlag{Name: "every", Value: time.Second, Usage: "with --follow: look for new output at least this often", Hidden: true},
		}, reportsLimitFlags()...),
		Action: runLogs,
	}
}

func runLogs(c *cli.Context) error {
	args := c.Args().Slice()
	if err := checkLogsFlags(c, args); err != nil {
		return err
	}
	limits, err := reportLimits(c)
	if err != nil {
		return err
	}
	host, name := args[0], ""
	if len(args) == 2 {
		name = args[1]
	}
	root := c.String("chroot-root")
	w := c.App.Writer
	if !c.Bool("raw") {
		// Every byte is the host's: filtered also into a pipe, which may
		// well end on a terminal (bento logs HOST | less -R).
		w = &logs.TerminalWriter{W: w, KeepColor: isTerminal(w) && useColor(c, w)}
	}
	max := c.Int64("max-bytes")
	switch {
	case c.Bool("list"):
		return listLogs(w, root, host, limits)
	case c.Bool("follow"):
		return logsError(logs.Follow(c.Context, root, host, name, w, c.Duration("every"), max, limits))
	}
	return catLog(w, c.App.ErrWriter, root, host, name, max, limits)
}

// checkLogsFlags refuses anything but a host and maybe a log's name, and
// sizes and durations that cannot be.
func checkLogsFlags(c *cli.Context, args []string) error {
	if len(args) == 0 || len(args) > 2 {
		return usageError("say which host: bento logs HOST [NAME] (bento status lists the hosts)")
	}
	if c.Duration("every") <= 0 {
		return usageError("--every must be positive")
	}
	if c.Int64("max-bytes") <= 0 {
		return usageError("--max-bytes must be positive")
	}
	return nil
}

// timeLayout is how tables show a time: with its zone.
const timeLayout = "2006-01-02 15:04:05 MST"

// listLogs prints the host's logs, newest marked.
func listLogs(w io.Writer, root, host string, limits status.ReportLimits) error {
	files, err := logs.List(root, host, limits)
	if err != nil {
		return logsError(err)
	}
	t := table.Table{Header: []string{"NAME", "SIZE", "WRITTEN", ""}}
	for _, l := range files {
		latest := ""
		if l.Latest {
			latest = "latest"
		}
		t.Rows = append(t.Rows, []string{termsafe.Line(l.Name), bytesize.Format(l.Size), l.ModTime.Local().Format(timeLayout), latest})
	}
	return t.Write(w)
}

// catLog prints one log (name "" is the latest), its name going to ew.
func catLog(w, ew io.Writer, root, host, name string, max int64, limits status.ReportLimits) error {
	rc, l, err := logs.Open(root, host, name, max, limits)
	if err != nil {
		return logsError(err)
	}
	defer rc.Close()
	fmt.Fprintf(ew, "==> %s: %s <==\n", host, termsafe.Line(l.Name))
	if _, err := io.Copy(w, rc); err != nil {
		if errors.Is(err, logs.ErrTooBig) {
			return failed(err)
		}
		return failed(fmt.Errorf("host %s: log %s: %w", host, termsafe.Line(l.Name), err))
	}
	return nil
}

func logsError(err error) error {
	var ue *status.UsageError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ue):
		return usageError("%w", err)
	}
	return failed(err)
}
