package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/bytesize"
	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/mirror"
)

func mirrorCommand() *cli.Command {
	flags := func() []cli.Flag {
		home, _ := os.UserHomeDir()
		return []cli.Flag{
			chrootRootFlag(),
			&cli.StringFlag{Name: "known-hosts", Value: filepath.Join(home, ".ssh", "known_hosts"), Usage: "known_hosts file pinning each mirror's host key (\"[host]:port ssh-ed25519 AAAA…\")", EnvVars: []string{"BENTO_MIRROR_KNOWN_HOSTS"}},
			&cli.StringFlag{Name: "identity", Value: filepath.Join(home, ".ssh", "id_ed25519"), Usage: "private key to log in to the mirrors with (unencrypted)", EnvVars: []string{"BENTO_MIRROR_IDENTITY"}},
			&cli.StringSliceFlag{Name: "host", Usage: "only this host (repeatable; default: every host with a chroot)"},
			&cli.IntFlag{Name: "jobs", Value: 4, Usage: "hosts copied at once per mirror (and files at once per host)"},
			&cli.BoolFlag{Name: "json", Usage: "print the results as JSON for scripts"},
		}
	}
	return &cli.Command{
		Name:  "mirror",
		Usage: "copy the publications to mirror servers, and bring the hosts' reports back",
		Description: "A mirror is another bento server with the same hosts, which agents fall back to\n" +
			"(services.bento.servers). See docs/mirrors.md.",
		Subcommands: []*cli.Command{
			{
				Name:      "push",
				Usage:     "copy each host's chroot (manifest, objects, cache, secrets; not reports) to the mirrors",
				ArgsUsage: "ssh://USER@HOST:PORT/CHROOT-ROOT...",
				Description: "Logs in to each mirror over SSH (SFTP) as an account that may write its chroot\n" +
					"root (root, restricted to internal-sftp) and copies, per host, what the mirror\n" +
					"lacks: objects/ (named by their hash: compared by size), cache/ (NARs before\n" +
					"narinfos) and secrets/ (given to the host's user there), then manifest.json\n" +
					"last, by rename, so a host reading the mirror never sees a manifest naming\n" +
					"files that are not there. What the primary no longer has is removed after.\n" +
					"Mirrors hold no signing key. Exits 1 when any host failed on any mirror.",
				Flags: flags(),
				Action: func(c *cli.Context) error {
					return mirrorAction(c, mirror.Push, "pushed")
				},
			},
			{
				Name:      "pull-reports",
				Usage:     "bring the hosts' newest reports back from the mirrors into this server's chroots",
				ArgsUsage: "ssh://USER@HOST:PORT/CHROOT-ROOT...",
				Description: "Reads each host's reports/status.json on each mirror and, when it is newer than\n" +
					"the one here (by finishedAt), copies it and the log it names into the host's\n" +
					"reports/ here, so bento status sees every host whichever server it reached.\n" +
					"What a mirror holds was written by the hosts: files must be regular, owned by\n" +
					"the host's user there, within bento status's size limits, and parse as that\n" +
					"host's report. Exits 1 when any host failed on any mirror.",
				Flags: flags(),
				Action: func(c *cli.Context) error {
					return mirrorAction(c, mirror.PullReports, "pulled")
				},
			},
		},
	}
}

// mirrorFunc is mirror.Push or mirror.PullReports.
type mirrorFunc func(ctx context.Context, o mirror.Options, d []mirror.Dest) ([]mirror.HostResult, error)

func mirrorAction(c *cli.Context, run mirrorFunc, verb string) error {
	dests, err := mirrorDests(c)
	if err != nil {
		return err
	}
	opts, err := mirrorOptions(c)
	if err != nil {
		return err
	}
	res, err := run(c.Context, opts, dests)
	if err != nil {
		return usageError("%w", err)
	}
	if c.Bool("json") {
		err = printMirrorJSON(c.App.Writer, res, verb)
	} else {
		err = printMirrorTable(c.App.Writer, res, verb)
	}
	if err != nil {
		return err
	}
	failedHosts := 0
	for _, r := range res {
		if r.Err != nil {
			failedHosts++
		}
	}
	if failedHosts > 0 {
		return failed(fmt.Errorf("%d of %d host copies failed (see above)", failedHosts, len(res)))
	}
	return nil
}

// mirrorDests parses the mirrors the arguments name.
func mirrorDests(c *cli.Context) ([]mirror.Dest, error) {
	if !c.Args().Present() {
		return nil, usageError("name at least one mirror: ssh://root@mirror.example:22/home/chroot (its chroot root)")
	}
	var dests []mirror.Dest
	for _, a := range c.Args().Slice() {
		d, err := mirror.ParseDest(a)
		if err != nil {
			return nil, usageError("%w", err)
		}
		dests = append(dests, d)
	}
	return dests, nil
}

// mirrorOptions reads the mirror flags, loading the known hosts and
// the identity they name.
func mirrorOptions(c *cli.Context) (mirror.Options, error) {
	for _, h := range c.StringSlice("host") {
		if err := fleet.ValidateName(h); err != nil {
			return mirror.Options{}, usageError("--host: %w", err)
		}
	}
	if c.Int("jobs") < 1 || c.Int("jobs") > 64 {
		return mirror.Options{}, usageError("--jobs %d is out of range: it must be from 1 to 64", c.Int("jobs"))
	}
	kh, err := mirror.LoadKnownHosts(c.String("known-hosts"))
	if err != nil {
		return mirror.Options{}, usageError("%w (--known-hosts pins the mirrors' host keys: bento never trusts a key on first use)", err)
	}
	signer, err := transport.LoadSigner(c.String("identity"))
	if err != nil {
		return mirror.Options{}, usageError("%w (--identity)", err)
	}
	return mirror.Options{
		Root:       c.String("chroot-root"),
		Hosts:      c.StringSlice("host"),
		Signer:     signer,
		KnownHosts: kh,
		Jobs:       c.Int("jobs"),
		Logger:     logger(c),
	}, nil
}

// mirrorState is a result's one word.
func mirrorState(r mirror.HostResult, verb string) string {
	switch {
	case r.Err != nil:
		return "failed"
	case r.Changed:
		return verb
	}
	return "unchanged"
}

func printMirrorTable(w io.Writer, res []mirror.HostResult, verb string) error {
	t := table.Table{Header: []string{"MIRROR", "HOST", "STATE", "FILES", "BYTES", "SKIPPED", "REMOVED", "MESSAGE"}}
	for _, r := range res {
		msg := r.Note
		if r.Err != nil {
			msg = r.Err.Error()
		}
		// Errors quote what the mirror sent: one line, no controls, so
		// that no cell can forge a row or drive the terminal.
		t.Rows = append(t.Rows, []string{termsafe.Line(r.Mirror), termsafe.Line(r.Host), mirrorState(r, verb),
			strconv.Itoa(r.Files), bytesize.Format(r.Bytes), strconv.Itoa(r.Skipped), strconv.Itoa(r.Removed), dash(termsafe.Line(msg))})
	}
	return t.Write(w)
}

// mirrorDoc is what bento mirror push/pull-reports --json print
// (docs/schema/mirror.json): one row per host and mirror.
type mirrorDoc struct {
	Hosts []mirrorRow `json:"hosts"`
}

// mirrorRow is one host's copy to or from one mirror.
type mirrorRow struct {
	Mirror  string `json:"mirror"`
	Host    string `json:"host"`
	State   string `json:"state" jsonschema:"pushed or pulled (the mirror's manifest, or the report here, was replaced), unchanged, or failed (error says why)"`
	Files   int    `json:"files" jsonschema:"files uploaded (push) or downloaded (pull-reports)"`
	Bytes   int64  `json:"bytes" jsonschema:"bytes of those files"`
	Skipped int    `json:"skipped" jsonschema:"files the destination already had"`
	Removed int    `json:"removed" jsonschema:"files and directories removed from the mirror (the primary no longer has them)"`
	Note    string `json:"note,omitempty" jsonschema:"why nothing changed, when that is worth saying"`
	Error   string `json:"error,omitempty"`
}

func printMirrorJSON(w io.Writer, res []mirror.HostResult, verb string) error {
	out := mirrorDoc{Hosts: []mirrorRow{}}
	for _, r := range res {
		x := mirrorRow{Mirror: r.Mirror, Host: r.Host, State: mirrorState(r, verb), Files: r.Files, Bytes: r.Bytes, Skipped: r.Skipped, Removed: r.Removed, Note: r.Note}
		if r.Err != nil {
			x.Error = r.Err.Error()
		}
		out.Hosts = append(out.Hosts, x)
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	// Errors quote what a mirror sent: no control character reaches a
	// terminal raw (the data stays what it was).
	_, err = w.Write(append(termsafe.EscapeJSON(data), '\n'))
	return err
}
