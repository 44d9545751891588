package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/internal/timespan"
	"github.com/bento-nix/bento/rollout"
)

const rolloutDescription = `A rollout publishes a new version in waves. At start (= bento deploy --rollout) every
selected host is built as by bento deploy; the tree is snapshotted (under --state-dir), so
later waves get exactly this version whatever the working tree holds by then; wave 0 (the
canaries: services.bento.rollout.wave = 0, or --wave-tag TAG=0) is published, the other
hosts keep their previous publication. Hosts can only apply what their own chroot serves:
an unpublished wave cannot get the version.

bento rollout step (the server module's timer runs it) reads the reports of the current
wave: when at least --quorum of its hosts are up-to-date and healthy on the new version, it
publishes the next wave; when any host rolled back, failed or is unhealthy on it, the
rollout halts and nothing more is published. Hosts silent past --wave-deadline do not block
a wave (--strict: they do). abort republishes the previous version to the hosts that got
the new one. A deploy while a rollout is in progress is refused unless --supersede.
See docs/rollout.md.`

// rolloutPolicyFlags are rollout start's (and deploy --rollout's).
func rolloutPolicyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "quorum", Value: "100%", Usage: "share of a wave's hosts that must be up-to-date and healthy before the next wave is published (90% or 0.9)"},
		&cli.StringFlag{Name: "wave-deadline", Value: "1h", Usage: "after this long, a wave's hosts that did not report no longer block it (" + timespan.Syntax + ")"},
		&cli.BoolFlag{Name: "strict", Usage: "hosts that did not report block their wave, past the deadline too"},
		&cli.StringSliceFlag{Name: "wave-tag", Usage: "put the hosts tagged TAG into wave N (TAG=N, repeatable; overrides services.bento.rollout.wave)"},
	}
}

// supersedeFlag lets a deploy or a new rollout replace an active rollout.
func supersedeFlag() cli.Flag {
	return &cli.BoolFlag{Name: "supersede", Usage: "replace a rollout in progress (its remaining waves are not published by it any more)"}
}

func rolloutCommand() *cli.Command {
	root := func() []cli.Flag {
		return []cli.Flag{chrootRootFlag(),
			&cli.DurationFlag{Name: "lock-wait", Value: time.Minute, Usage: "wait this long for a deploy or another step to finish"}}
	}
	// step and abort publish: they sign as the deploy that started the
	// rollout did.
	publishing := func() []cli.Flag { return append(root(), publicationFlags()...) }
	withJSON := func(fs []cli.Flag) []cli.Flag {
		return append(fs, &cli.BoolFlag{Name: "json", Usage: "print the rollout as JSON"})
	}
	return &cli.Command{
		Name:        "rollout",
		Usage:       "publish a new version in waves: canaries first, the rest when they are healthy",
		Description: rolloutDescription,
		Subcommands: []*cli.Command{
			{
				Name:      "start",
				Usage:     "build every selected host, publish wave 0 and record the rollout (= bento deploy --rollout)",
				ArgsUsage: "[HOST|GLOB|@TAG]...",
				Flags:     rolloutStartFlags(),
				Action:    runRolloutStart,
			},
			{Name: "step", Usage: "judge the current wave from the reports; publish the next one or halt", Flags: withJSON(publishing()), Action: runRolloutStep},
			{Name: "status", Usage: "show the rollout: waves, hosts per state, since when", Flags: withJSON([]cli.Flag{chrootRootFlag(), &cli.BoolFlag{Name: "hosts", Usage: "list every host with its verdict"}}), Action: runRolloutStatus},
			{Name: "pause", Usage: "stop publishing further waves until resume", Flags: root(), Action: func(c *cli.Context) error { return runRolloutChange(c, rollout.Pause) }},
			{Name: "resume", Usage: "let a paused (or halted) rollout step again", Flags: root(), Action: func(c *cli.Context) error { return runRolloutChange(c, rollout.Resume) }},
			{Name: "abort", Usage: "republish the previous version to the hosts that got the new one, and end the rollout", Flags: withJSON(publishing()), Action: runRolloutAbort},
		},
	}
}

// rolloutStartFlags are deploy's flags and the policy's.
func rolloutStartFlags() []cli.Flag {
	var fs []cli.Flag
	for _, f := range deployCommand().Flags {
		if n := f.Names()[0]; n != "rollout" && n != "dry-run" {
			fs = append(fs, f)
		}
	}
	return fs
}

func runRolloutStart(c *cli.Context) error {
	if c.Bool("dry-run") {
		return usageError("--rollout does not mix with --dry-run: run bento deploy --dry-run to see what it would publish")
	}
	o, err := rolloutOptions(c)
	if err != nil {
		return err
	}
	report, st, err := rollout.Start(c.Context, o)
	if err != nil && report == nil {
		return deployError(err)
	}
	if perr := printDeployReport(c, report); perr != nil && err == nil {
		err = perr
	}
	if st != nil && !c.Bool("json") {
		w := &termsafe.Writer{W: c.App.ErrWriter}
		fmt.Fprintf(w, "bento: %s\n", st.Summary())
		for _, wv := range st.Waves[1:] {
			fmt.Fprintf(w, "bento: wave %d (%d hosts) waits: bento rollout step publishes it once wave %d is healthy\n", wv.Number, len(wv.Hosts), st.Waves[0].Number)
		}
	}
	return err
}

func rolloutOptions(c *cli.Context) (rollout.Options, error) {
	d, err := deployOptions(c)
	if err != nil {
		return rollout.Options{}, err
	}
	p, err := rolloutPolicy(c)
	if err != nil {
		return rollout.Options{}, err
	}
	tags, err := waveTags(c.StringSlice("wave-tag"))
	if err != nil {
		return rollout.Options{}, err
	}
	snap, err := filepath.Abs(filepath.Join(c.String("state-dir"), "rollout"))
	if err != nil {
		return rollout.Options{}, usageError("--state-dir: %w", err)
	}
	return rollout.Options{Deploy: d, Policy: p, WaveTags: tags, Supersede: c.Bool("supersede"), SnapshotDir: snap}, nil
}

func rolloutPolicy(c *cli.Context) (rollout.Policy, error) {
	q, err := parseQuorum(c.String("quorum"))
	if err != nil {
		return rollout.Policy{}, usageError("--quorum: %w", err)
	}
	d, err := timespan.Parse(c.String("wave-deadline"))
	if err != nil {
		return rollout.Policy{}, usageError("--wave-deadline: %w", err)
	}
	p := rollout.Policy{Quorum: q, WaveDeadline: d, Strict: c.Bool("strict")}
	if err := p.Check(); err != nil {
		return p, usageError("%w", err)
	}
	return p, nil
}

// parseQuorum reads "90%" or "0.9".
func parseQuorum(s string) (float64, error) {
	pct := strings.HasSuffix(s, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a share (write 90%% or 0.9)", s)
	}
	if pct {
		v /= 100
	}
	if !(v > 0 && v <= 1) {
		return 0, fmt.Errorf("%q is not between 0 (exclusive) and 100%%", s)
	}
	return v, nil
}

// waveTags reads --wave-tag TAG=N.
func waveTags(specs []string) (map[string]int, error) {
	out := map[string]int{}
	for _, s := range specs {
		tag, n, ok := strings.Cut(s, "=")
		w, err := strconv.Atoi(n)
		if !ok || tag == "" || err != nil || w < 0 {
			return nil, usageError("--wave-tag %q: write TAG=N, N a wave number (0 for the canaries)", s)
		}
		if prev, dup := out[tag]; dup && prev != w {
			return nil, usageError("--wave-tag: tag %q is given waves %d and %d", tag, prev, w)
		}
		out[tag] = w
	}
	return out, nil
}

// stepOptions are the options of the commands on a recorded rollout.
func stepOptions(c *cli.Context) (rollout.StepOptions, error) {
	if c.String("chroot-root") == "" {
		return rollout.StepOptions{}, usageError("--chroot-root is empty: give the directory holding the hosts' chroots (default %s)", DefaultChrootRoot)
	}
	ew := errWriter(c)
	o := rollout.StepOptions{Deploy: deploy.Options{
		Root:     c.String("chroot-root"),
		LockWait: c.Duration("lock-wait"),
		Nix:      nixRunner(c),
		Logger:   logger(c),
		Print:    func(line string) { fmt.Fprintln(ew, "bento:", line) },
	}}
	if hasFlag(c, "publication-key") {
		var err error
		if o.Deploy.PublicationKey, o.Deploy.NextPublicationKey, err = publicationKeys(c); err != nil {
			return o, err
		}
	}
	return o, nil
}

// hasFlag tells whether the command defines the flag.
func hasFlag(c *cli.Context, name string) bool {
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

func runRolloutStep(c *cli.Context) error {
	res, err := runRolloutAct(c, rollout.Step, func(w io.Writer, res *rollout.StepResult) {
		fmt.Fprintf(w, "%s: %s\n", res.Decision.Action, res.Decision.Reason)
		fmt.Fprintln(w, res.State.Summary())
	})
	if err != nil {
		return err
	}
	if res.State.Phase == rollout.PhaseHalted {
		return failed(fmt.Errorf("rollout %s is halted: %s (bento rollout abort restores the previous version; resume goes on)", res.State.ID, res.State.Reason))
	}
	return nil
}

// runRolloutAct runs a step or an abort and shows what it did: with
// --json the state, else the deploy's report when it published and then
// lines. A failed publication exits 1.
func runRolloutAct(c *cli.Context, act func(context.Context, rollout.StepOptions) (*rollout.StepResult, error), lines func(io.Writer, *rollout.StepResult)) (*rollout.StepResult, error) {
	o, err := stepOptions(c)
	if err != nil {
		return nil, err
	}
	res, err := act(c.Context, o)
	if err != nil {
		return nil, deployError(err)
	}
	if c.Bool("json") {
		if err := printRolloutJSON(c.App.Writer, res.State, false); err != nil {
			return nil, err
		}
	} else {
		w := &termsafe.Writer{W: c.App.Writer}
		if res.Published != nil {
			if err := printDeploy(w, errWriter(c), *res.Published, pruneMode{}, useColor(c, c.App.Writer)); err != nil {
				return nil, err
			}
		}
		lines(w, res)
	}
	if res.Published != nil {
		if err := res.Published.Failure(); err != nil {
			return nil, failed(err)
		}
	}
	return res, nil
}

func runRolloutChange(c *cli.Context, f func(context.Context, rollout.StepOptions) (*rollout.State, error)) error {
	o, err := stepOptions(c)
	if err != nil {
		return err
	}
	st, err := f(c.Context, o)
	if err != nil {
		return deployError(err)
	}
	_, err = fmt.Fprintln(&termsafe.Writer{W: c.App.Writer}, st.Summary())
	return err
}

func runRolloutAbort(c *cli.Context) error {
	_, err := runRolloutAct(c, rollout.Abort, func(w io.Writer, res *rollout.StepResult) {
		fmt.Fprintln(w, res.State.Summary())
		if bad := res.State.Unrestorable(); len(bad) > 0 {
			fmt.Fprintf(w, "not restored (no previous version kept: a new host, or its tree could not be read at start): %s\n", strings.Join(bad, ", "))
		}
	})
	return err
}

func runRolloutStatus(c *cli.Context) error {
	st, err := rollout.Load(c.String("chroot-root"))
	if err != nil {
		return failed(err)
	}
	if st == nil {
		if c.Bool("json") {
			_, err := fmt.Fprintln(c.App.Writer, "null")
			return err
		}
		fmt.Fprintf(c.App.Writer, "no rollout recorded in %s\n", c.String("chroot-root"))
		return nil
	}
	if c.Bool("json") {
		return printRolloutJSON(c.App.Writer, st, true)
	}
	return printRolloutTable(&termsafe.Writer{W: c.App.Writer}, st, c.Bool("hosts"))
}

// printRolloutTable prints the summary line, one row per wave and, with
// hosts, one per host.
func printRolloutTable(w io.Writer, st *rollout.State, hosts bool) error {
	fmt.Fprintln(w, st.Summary())
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tSTATE\tHOSTS\tGOOD\tPENDING\tSILENT\tBAD\tSINCE\tVERDICT")
	for _, wv := range st.Waves {
		n := st.Counts(wv)
		since := "-"
		if wv.Since != nil {
			since = wv.Since.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", wv.Number, wv.State, len(wv.Hosts), n[rollout.HostGood], n[rollout.HostPending], n[rollout.HostSilent], n[rollout.HostBad], since, termsafe.Line(orDashStr(wv.Verdict)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !hosts {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tWAVE\tVERSION\tPREVIOUS\tVERDICT\tDETAIL")
	for _, h := range st.Hosts {
		prev := "-"
		if h.Previous != nil {
			prev = h.Previous.Version
		}
		state := string(h.State)
		if state == "" {
			state = string(rollout.HostWaiting)
		}
		if h.Restored {
			state = "restored"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", h.Name, h.Wave, orDashStr(h.Version), prev, state, termsafe.Line(orDashStr(h.Detail+h.PublishError)))
	}
	return tw.Flush()
}

func orDashStr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printRolloutJSON(w io.Writer, st *rollout.State, hosts bool) error {
	v := st.View(hosts)
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(termsafe.EscapeJSON(append(data, '\n')))
	return err
}
