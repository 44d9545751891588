package status

import (
	"context"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// A host that runs its publication can still report trouble (a full disk,
// damaged state files moved aside): the table's message says it.
func TestAppliedHostsErrorIsShown(t *testing.T) {
	withError := func(r manifest.Report, e string) manifest.Report {
		r.Error = e
		return r
	}
	cases := []struct {
		name    string
		report  manifest.Report
		state   State
		message string
	}{
		{"disk full", withError(applied(v1, sysA, now.Add(-time.Minute)), "report not queued: disk full: /var/lib/bento: no space left on device"),
			UpToDate, "report not queued: disk full: /var/lib/bento: no space left on device"},
		{"damaged state, reboot waits", func() manifest.Report {
			r := withError(applied(v1, sysA, now.Add(-time.Minute)), "damaged state: /var/lib/bento/state.json: moved aside")
			r.RebootRequired = true
			return r
		}(), RebootRequired, "a new kernel, initrd or modules wait for a reboot; damaged state: /var/lib/bento/state.json: moved aside"},
		{"no error", applied(v1, sysA, now.Add(-time.Minute)), UpToDate, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newChroot(t)
			c.publish("pi", v1, now.Add(-time.Hour), sysA)
			c.report("pi", tc.report)
			s, err := Collect(context.Background(), Options{Root: c.root, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			if r := s.Hosts[0]; r.State != tc.state || r.Message != tc.message {
				t.Errorf("state %s, message %q; want %s, %q", r.State, r.Message, tc.state, tc.message)
			}
		})
	}
}
