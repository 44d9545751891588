package render

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/status"
)

// The SERVER column appears only when the hosts last reported through more
// than one server (a fleet with mirrors in use), before the message.
func TestTableServerColumn(t *testing.T) {
	at := time.Date(2025, 3, 14, 12, 0, 0, 0, time.UTC)
	rows := func(servers ...string) *status.Snapshot {
		s := &status.Snapshot{GeneratedAt: at, Summary: status.Summary{Total: len(servers), States: map[status.State]int{status.UpToDate: len(servers)}}}
		for i, srv := range servers {
			s.Hosts = append(s.Hosts, status.Row{Host: string(rune('a' + i)), State: status.UpToDate, Message: "fine", Server: srv})
		}
		return s
	}
	for _, tc := range []struct {
		name    string
		snap    *status.Snapshot
		want    []string
		without bool
	}{
		{"one server", rows("bento:22", "bento:22", ""), nil, true},
		{"a primary and a mirror", rows("bento:22", "mirror:2222", ""), []string{"SERVER       MESSAGE", "bento:22     fine", "mirror:2222  fine", "-            fine"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Table(&buf, tc.snap, TableOptions{}); err != nil {
				t.Fatal(err)
			}
			out := buf.String()
			if tc.without == strings.Contains(out, "SERVER") {
				t.Errorf("SERVER column shown: %v, want %v:\n%s", !tc.without, !tc.without, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("table lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
