// Package table prints the aligned tables of every bento command, so
// they all look alike: a header, columns two spaces apart, widths measured
// in terminal cells (wide characters, combining marks, emoji), colour
// codes never counted, the last column never padded, trailing empty cells
// left out.
package table

import (
	"bufio"
	"io"
	"strings"

	"github.com/mattn/go-runewidth"
)

// Table is one table to print.
type Table struct {
	Header []string
	Rows   [][]string
	// Color, when set, gives the ANSI SGR parameters of a cell ("1;31"),
	// "" for none; row -1 is the header.
	Color func(row, col int) string
}

// cond measures cells the way terminals draw them.
var cond = &runewidth.Condition{EastAsianWidth: false, StrictEmojiNeutral: true}

// Width is how many terminal cells s takes.
func Width(s string) int { return cond.StringWidth(s) }

// Truncate cuts s to width cells, ending in "…" when it cut.
func Truncate(s string, width int) string { return cond.Truncate(s, width, "…") }

// Widths are the widths of the columns but the last (never padded).
func (t Table) Widths() []int {
	n := len(t.Header)
	for _, row := range t.Rows {
		n = max(n, len(row))
	}
	widths := make([]int, n)
	for i, h := range t.Header {
		widths[i] = Width(h)
	}
	for _, row := range t.Rows {
		for i := 0; i < len(row)-1 && i < n; i++ {
			widths[i] = max(widths[i], Width(row[i]))
		}
	}
	return widths
}

// Write prints the header (when there is one) and the rows.
func (t Table) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	widths := t.Widths()
	if len(t.Header) > 0 {
		t.writeRow(bw, -1, t.Header, widths)
	}
	for i, row := range t.Rows {
		t.writeRow(bw, i, row, widths)
	}
	return bw.Flush()
}

func (t Table) writeRow(w *bufio.Writer, r int, cells []string, widths []int) {
	last := len(cells) - 1
	for last > 0 && cells[last] == "" {
		last--
	}
	for i := 0; i <= last; i++ {
		c := cells[i]
		if code := t.color(r, i); code != "" {
			w.WriteString("\x1b[" + code + "m" + c + "\x1b[0m")
		} else {
			w.WriteString(c)
		}
		if i < last && i < len(widths) {
			w.WriteString(strings.Repeat(" ", max(0, widths[i]-Width(c))+2))
		}
	}
	w.WriteByte('\n')
}

func (t Table) color(r, c int) string {
	if t.Color == nil {
		return ""
	}
	return t.Color(r, c)
}
