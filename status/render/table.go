// Package render prints a status.Snapshot: the human table (Table,
// SummaryLine), the documented JSON document (JSON) and Prometheus text
// metrics (Prometheus). Host-written text reaches it already made one line
// and terminal-safe by status; JSON escapes what encoding/json leaves raw.
package render

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/table"
	"github.com/bento-nix/bento/status"
)

// TableOptions shape the human table.
type TableOptions struct {
	// Color adds ANSI colours (only on a terminal, never with NO_COLOR).
	Color bool
	// MessageWidth cuts messages to that many columns; 0 keeps them whole.
	MessageWidth int
	// Width, when positive and MessageWidth is not set, is the terminal's
	// width: messages are cut so that rows fit (but never below 20 columns).
	Width int
}

// minMessageWidth is the narrowest a cut message gets on a narrow terminal.
const minMessageWidth = 20

// ANSI colours per state: red needs action, yellow is silence, cyan is
// work in progress, green is fine, grey is not deployed.
var stateColor = map[status.State]string{
	status.Unreadable:     "1;31",
	status.Failing:        "1;31",
	status.RolledBack:     "1;31",
	status.Drift:          "1;35",
	status.Stale:          "33",
	status.NeverSeen:      "33",
	status.Pending:        "36",
	status.RebootRequired: "36",
	status.Unpublished:    "36",
	status.Removed:        "90",
	status.UpToDate:       "32",
	status.Disabled:       "90",
	status.NotManaged:     "90",
}

func paint(s, code string, on bool) string {
	if !on || code == "" {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

// Table prints one aligned row per host and the summary line. Widths
// are measured in terminal cells (wide and combining characters, emoji)
// and colour codes never count, so columns line up whatever the content.
func Table(w io.Writer, s *status.Snapshot, o TableOptions) error {
	bw := bufio.NewWriter(w)
	if len(s.Hosts) > 0 {
		if err := hostTable(s, o).Write(bw); err != nil {
			return err
		}
	}
	bw.WriteString(SummaryLine(s, o.Color))
	bw.WriteByte('\n')
	return bw.Flush()
}

// hostTable is one row per host, its messages cut and its cells coloured
// as o says.
func hostTable(s *status.Snapshot, o TableOptions) table.Table {
	t := table.Table{Header: []string{"HOST", "STATE", "PUBLISHED", "APPLIED", "SYSTEM", "SEEN", "MESSAGE"}}
	// Which server each host reached matters once there are several
	// (mirrors): only then a column says it.
	withServer := serversSeen(s.Hosts) > 1
	if withServer {
		t.Header = slices.Insert(t.Header, len(t.Header)-1, "SERVER")
	}
	for i := range s.Hosts {
		row := tableCells(&s.Hosts[i], s.GeneratedAt)
		if withServer {
			row = slices.Insert(row, len(row)-1, orDash(s.Hosts[i].Server))
		}
		t.Rows = append(t.Rows, row)
	}
	last := len(t.Header) - 1
	cutMessages(t.Rows, last, s, o.messageWidth(t.Widths()))
	if o.Color {
		t.Color = func(row, col int) string {
			if row < 0 {
				return "1"
			}
			return cellColor(&s.Hosts[row], col, last)
		}
	}
	return t
}

// cutMessages cuts the messages (column last) of rows wider than width
// cells; 0 keeps them whole.
func cutMessages(rows [][]string, last int, s *status.Snapshot, width int) {
	if width <= 0 {
		return
	}
	for i, row := range rows {
		if table.Width(row[last]) > width {
			row[last] = cut(row[last], retryTail(&s.Hosts[i], s.GeneratedAt), width)
		}
	}
}

// cut shortens a message to width cells; a tail (when the host will
// retry) stays visible whatever is cut before it.
func cut(msg, tail string, width int) string {
	if tail == "" {
		return table.Truncate(msg, width)
	}
	tail = " (" + tail + ")"
	head := width - table.Width(tail)
	if head < 2 {
		return table.Truncate(strings.TrimPrefix(tail, " "), width)
	}
	return table.Truncate(msg, head) + tail
}

// retryTail is when a failing or rolled-back host tries its version
// again ("retry in 12m", "retry due"), "" for other rows.
func retryTail(r *status.Row, now time.Time) string {
	if r.NextRetry == nil || (r.State != status.Failing && r.State != status.RolledBack) {
		return ""
	}
	if d := r.NextRetry.Sub(now); d > 0 {
		return "retry in " + status.Ago(d)
	}
	return "retry due"
}

// messageWidth is how many columns a message may take: MessageWidth when
// set, else what the terminal's Width leaves (at least minMessageWidth),
// else 0 for no limit.
func (o TableOptions) messageWidth(widths []int) int {
	if o.MessageWidth != 0 || o.Width <= 0 {
		return o.MessageWidth
	}
	used := 0
	for _, w := range widths[:len(widths)-1] {
		used += w + 2
	}
	return max(minMessageWidth, o.Width-used-1)
}

// serversSeen counts the distinct servers the hosts last reported through.
func serversSeen(rows []status.Row) int {
	seen := map[string]bool{}
	for _, r := range rows {
		if r.Server != "" {
			seen[r.Server] = true
		}
	}
	return len(seen)
}

// cellColor is the colour of column col of r's row; msgCol is the
// message's column.
func cellColor(r *status.Row, col, msgCol int) string {
	switch {
	case col == 1:
		return stateColor[r.State]
	case col == 4 && r.SystemMatch != nil && !*r.SystemMatch:
		return stateColor[status.Drift]
	case col == msgCol && r.HasSecretErrors():
		// Whatever the state, a secret not installed needs action.
		return stateColor[status.Failing]
	}
	return ""
}

func tableCells(r *status.Row, now time.Time) []string {
	system := "-"
	if r.SystemMatch != nil {
		system = "match"
		if !*r.SystemMatch {
			system = "differs"
		}
	}
	seen := "never"
	if r.LastSeen != nil {
		seen = status.Ago(now.Sub(*r.LastSeen))
	}
	return []string{
		r.Host,
		string(r.State),
		orDash(status.ShortVersion(r.PublishedVersion)),
		orDash(status.ShortVersion(r.AppliedVersion)),
		system,
		seen,
		r.Message,
	}
}

// SummaryLine counts hosts per state, most urgent first, then the hosts
// with secrets not installed: "5 hosts: 1 failing, 1 pending, 3 up-to-date;
// 1 with secrets not installed".
func SummaryLine(s *status.Snapshot, color bool) string {
	if s.Summary.Total == 0 {
		return fmt.Sprintf("no hosts in %s yet (bento deploy publishes them)", s.Root)
	}
	var parts []string
	for _, st := range status.States {
		if n := s.Summary.States[st]; n > 0 {
			parts = append(parts, paint(fmt.Sprintf("%d %s", n, st), stateColor[st], color))
		}
	}
	noun := "hosts"
	if s.Summary.Total == 1 {
		noun = "host"
	}
	line := fmt.Sprintf("%d %s: %s", s.Summary.Total, noun, strings.Join(parts, ", "))
	if n := s.Summary.SecretErrors; n > 0 {
		line += "; " + paint(fmt.Sprintf("%d with secrets not installed", n), stateColor[status.Failing], color)
	}
	return line
}

// orDash fills an empty cell, so columns stay apart.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
