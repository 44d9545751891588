package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sync/errgroup"

	"github.com/bento-nix/bento/history"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/rollout"
	"github.com/bento-nix/bento/serve"
)

const serveDescription = `Serves the fleet's status as a read-only web page, from the same chroots,
build records and flake as bento status:

  /                 every host with its state, versions, system match, last
                    seen and message; ?state= ?tag= ?q= (name or glob) ?sort=
  /host/HOST        one host: its systems, last report, history, latest log
  /api/status       the document of bento status --json
  /api/history      the document of bento history --json (with a history)
  /metrics          the metrics of bento status --prometheus

The page updates itself within about 2 s of a report arriving (server-sent
events from one watch of the chroots, shared by every client), and without
JavaScript it reloads itself every --every.

It listens on loopback by default: open it through
  ssh -L 8470:127.0.0.1:8470 SERVER   then   http://127.0.0.1:8470/
The page has no authentication: a non-loopback --listen needs --allow-remote,
and then anyone who reaches the port sees the whole fleet. unix:/path listens
on a Unix socket (mode 0660). Nothing on the page changes the fleet.

The flake is evaluated once, at start (for tags, disabled and unmanaged
hosts); restart bento serve after changing the fleet's hosts, or run it with
--no-eval. See docs/serve.md.`

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:        "serve",
		Usage:       "serve the fleet's status as a web page, its JSON and its metrics",
		Description: serveDescription,
		Flags: append(append(fleetFlags(),
			chrootRootFlag(),
			statusStateDirFlag(),
			&cli.StringFlag{Name: "listen", Value: serve.DefaultListen, Usage: "host:port, or unix:/path for a Unix socket", EnvVars: []string{"BENTO_SERVE_LISTEN"}},
			&cli.BoolFlag{Name: "allow-remote", Usage: "allow a --listen address beyond loopback: the page has no authentication (docs/serve.md)"},
			&cli.BoolFlag{Name: "no-eval", Usage: "do not evaluate the flake: show what the chroot root holds"},
			&cli.DurationFlag{Name: "every", Value: serve.DefaultEvery, Usage: "read the chroots at least this often (a report is shown at once anyway), and reload at this rate without JavaScript"},
			&cli.DurationFlag{Name: "stale-after", Usage: "a host silent for longer is stale (default: 3 of its poll intervals, else 45m)"},
		), reportsLimitFlags()...),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	if err := checkServeFlags(c); err != nil {
		return err
	}
	l, err := serve.Listen(c.Context, c.String("listen"), c.Bool("allow-remote"))
	if err != nil {
		if errors.Is(err, serve.ErrRemote) {
			return usageError("%w", err)
		}
		return failed(err)
	}
	defer l.Close()
	opts, err := statusOptions(c)
	if err != nil {
		return err
	}
	log := logger(c)
	so := serve.Options{Status: opts, Every: c.Duration("every"), Log: log}
	if opts.History != nil {
		// serve records the reports it reads, as status does (Collect).
		defer opts.History.Close()
		so.History = serveHistory{db: opts.History, root: opts.Root}
	} else if db, err := history.OpenReadOnly(c.Context, history.Path(opts.Root)); err == nil {
		// Not writable here (a read-only state directory): still shown.
		defer db.Close()
		so.History = serveHistory{db: db, root: opts.Root}
	}
	so.Rollout = func() (*serve.Rollout, error) { return serveRollout(opts.Root) }
	s := serve.New(so)
	// The address as the listener has it: with --listen :0, the port picked.
	fmt.Fprintf(c.App.ErrWriter, "bento serve: listening on %s (%s)\n", listenURL(l.Addr().Network(), l.Addr().String()), opts.Root)
	g, ctx := errgroup.WithContext(c.Context)
	g.Go(func() error { return s.Run(ctx) })
	g.Go(func() error { return s.Serve(ctx, l, 5*time.Second) })
	if err := g.Wait(); err != nil && c.Context.Err() == nil {
		return failed(err)
	}
	return nil
}

// checkServeFlags refuses arguments, and durations that cannot be.
func checkServeFlags(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError("bento serve takes no arguments (got %q): the page shows every host and filters them itself", c.Args().First())
	}
	if c.Duration("every") <= 0 {
		return usageError("--every must be positive")
	}
	if c.Duration("stale-after") < 0 {
		return usageError("--stale-after must be positive")
	}
	return nil
}

// serveHistory gives the page bento history's words and /api/history
// bento history --json's document.
type serveHistory struct {
	db   *history.DB
	root string
}

func (h serveHistory) Timeline(ctx context.Context, host string, limit int) ([]serve.Event, error) {
	events, err := h.db.Timeline(ctx, history.Query{Hosts: []string{host}, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := make([]serve.Event, len(events))
	for i, e := range events {
		// Newest first on the page.
		out[len(events)-1-i] = serve.Event{At: e.At, Kind: e.Kind, Text: describeEvent(e), State: e.State}
	}
	return out, nil
}

// JSON prints history.Document as bento history --json does (printHistory).
func (h serveHistory) JSON(ctx context.Context, w io.Writer, hosts []string, since time.Time, limit int) error {
	doc, err := h.db.Document(ctx, h.root, history.Query{Hosts: hosts, Since: since, Limit: limit}, time.Now())
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(termsafe.EscapeJSON(data), '\n'))
	return err
}

// serveRollout is the fleet page's view of the recorded rollout (nil when
// there is none).
func serveRollout(root string) (*serve.Rollout, error) {
	st, err := rollout.Load(root)
	if err != nil || st == nil {
		return nil, err
	}
	ro := &serve.Rollout{ID: st.ID, Phase: string(st.Phase), Reason: st.Reason, Current: st.Current, Since: st.Since}
	for _, w := range st.Waves {
		ro.Waves = append(ro.Waves, serve.RolloutWave{Number: w.Number, Hosts: len(w.Hosts), State: string(w.State), Verdict: w.Verdict})
	}
	return ro, nil
}

func listenURL(network, addr string) string {
	if network == "unix" {
		return "unix:" + addr
	}
	return "http://" + addr + "/"
}
