package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/internal/termsafe"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/status"
)

// agentStatusCommand is "bento agent status": the host's own view of where
// it stands, from its state directory alone (no server needed).
func agentStatusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show what this host applied, its last attempt, next retry, queued reports, planned reboot and whether a tick runs",
		Description: "Reads the agent's state directory and changes nothing: it works while the\n" +
			"server is unreachable and while a tick runs. Exits 0, or 1 when the last\n" +
			"attempt failed or rolled back, a switch waits for its confirmation, or a\n" +
			"state file is damaged.",
		Flags: append(agentConfigFlags(),
			&cli.BoolFlag{Name: "json", Usage: "print the status as JSON"},
		),
		Action: func(c *cli.Context) error {
			cfg, err := agentConfig(c)
			if err != nil {
				return err
			}
			now := time.Now()
			s, err := agent.ReadStatus(cfg, now)
			if err != nil {
				return failed(err)
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				if err := enc.Encode(s); err != nil {
					return err
				}
			} else {
				writeAgentStatus(&termsafe.Writer{W: c.App.Writer}, s, now)
			}
			if troubled(s) {
				return failed(nil)
			}
			return nil
		},
	}
}

// troubled: something on this host needs a look.
func troubled(s *agent.HostStatus) bool {
	if len(s.Problems) > 0 || s.Unconfirmed != nil {
		return true
	}
	return s.Attempt != nil && !s.Attempt.Running && (s.Attempt.Result == manifest.ResultFailure || s.Attempt.Result == manifest.ResultRolledBack)
}

func writeAgentStatus(w io.Writer, s *agent.HostStatus, now time.Time) {
	var t table.Table
	row := func(k, v string) { t.Rows = append(t.Rows, []string{k, v}) }
	when := func(at time.Time) string { return agentStatusTime(at, now) }
	row("host", s.Host)
	row("applied", dash(status.ShortVersion(s.AppliedVersion))+"  "+dash(s.AppliedSystem))
	row("last attempt", lastAttemptCell(s.Attempt, now))
	if s.NextRetry != nil {
		row("next retry", when(*s.NextRetry)+"  (bento agent run --now tries at once)")
	}
	if u := s.Unconfirmed; u != nil {
		row("unconfirmed", fmt.Sprintf("switch to %s (%s) at %s; rolled back after %s unless the server answers", u.To, status.ShortVersion(u.Version), when(u.At), when(u.ConfirmBy)))
	}
	row("queued reports", fmt.Sprint(s.QueuedReports))
	if p := s.PendingReboot; p != nil {
		row("planned reboot", when(p.At)+" into "+p.System)
	}
	tick := "no"
	if s.TickRunning {
		tick = "yes (" + s.TickHolder + ")"
	}
	row("tick running", tick)
	if r := s.LastReport; r != nil {
		msg := string(r.Result)
		if r.Error != "" {
			msg += ": " + r.Error
		}
		row("last report", fmt.Sprintf("%s, %s", msg, when(r.FinishedAt)))
	}
	for _, p := range s.Problems {
		row("problem", p)
	}
	t.Write(w)
}

// agentStatusTime is at with its zone and how long ago (or in how long)
// it is, the durations as bento status writes them.
func agentStatusTime(at, now time.Time) string {
	if at.IsZero() {
		return "-"
	}
	d := now.Sub(at)
	if d > -time.Second && d < time.Second {
		return at.Local().Format(timeLayout) + " (just now)"
	}
	if d >= 0 {
		return fmt.Sprintf("%s (%s ago)", at.Local().Format(timeLayout), status.Ago(d))
	}
	return fmt.Sprintf("%s (in %s)", at.Local().Format(timeLayout), status.Ago(-d))
}

// lastAttemptCell is the "last attempt" row's value.
func lastAttemptCell(a *agent.Attempt, now time.Time) string {
	if a == nil {
		return "none"
	}
	result := string(a.Result)
	if a.Running {
		result = "running (or interrupted)"
	}
	return fmt.Sprintf("%s, attempt %d: %s, started %s", status.ShortVersion(a.Version), a.Count, dash(result), agentStatusTime(a.StartedAt, now))
}
