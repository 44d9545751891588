package table

import (
	"strings"
	"testing"
)

func TestTableAlignsCellsNotBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		t    Table
		want string
	}{
		{"plain", Table{Header: []string{"HOST", "STATE", "MESSAGE"}, Rows: [][]string{{"web-1", "up-to-date", ""}, {"db", "failing", "build: boom"}}},
			"HOST   STATE       MESSAGE\nweb-1  up-to-date\ndb     failing     build: boom\n"},
		{"wide characters and emoji", Table{Header: []string{"A", "B"}, Rows: [][]string{{"日本", "x"}, {"🍱", "y"}, {"é", "z"}}},
			"A     B\n日本  x\n🍱    y\né     z\n"},
		{"colour never counts", Table{Header: []string{"A", "B"}, Rows: [][]string{{"red", "x"}}, Color: func(r, c int) string {
			if r == 0 && c == 0 {
				return "31"
			}
			return ""
		}}, "A    B\n\x1b[31mred\x1b[0m  x\n"},
		{"no header", Table{Rows: [][]string{{"a", "b"}, {"ccc", "d"}}}, "a    b\nccc  d\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := tc.t.Write(&b); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got\n%q\nwant\n%q", b.String(), tc.want)
			}
		})
	}
}
