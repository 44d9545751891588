package status

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// What a host's last update downloaded (files and, through its binary
// cache, NARs) is shown once it applied the version, and always in JSON.
func TestBytesFetched(t *testing.T) {
	cases := []struct {
		name    string
		report  manifest.Report
		state   State
		message string // "" means the message must not mention fetching
	}{
		{"applied", withBytes(applied(v1, sysA, now.Add(-time.Minute)), 3<<20+300<<10), UpToDate, "last update fetched 3.3 MiB"},
		{"applied, nothing fetched", applied(v1, sysA, now.Add(-time.Minute)), UpToDate, ""},
		{"reboot waits", func() manifest.Report {
			r := withBytes(applied(v1, sysA, now.Add(-time.Minute)), 2048)
			r.RebootRequired = true
			return r
		}(), RebootRequired, "last update fetched 2.0 KiB"},
		{"failed", func() manifest.Report {
			r := withBytes(applied(v1, sysA, now.Add(-time.Minute)), 2048)
			r.AppliedVersion, r.Result, r.Stage, r.Error = "", manifest.ResultFailure, manifest.StageFailed, "realise: boom"
			return r
		}(), Failing, ""},
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
			r := s.Hosts[0]
			if r.State != tc.state || r.BytesFetched != tc.report.BytesFetched {
				t.Errorf("state %s, bytesFetched %d; want %s, %d", r.State, r.BytesFetched, tc.state, tc.report.BytesFetched)
			}
			if tc.message != "" && !strings.Contains(r.Message, tc.message) {
				t.Errorf("message %q lacks %q", r.Message, tc.message)
			}
			if tc.message == "" && strings.Contains(r.Message, "fetched") {
				t.Errorf("message %q mentions fetching", r.Message)
			}
		})
	}
}

func withBytes(r manifest.Report, n int64) manifest.Report {
	r.BytesFetched = n
	return r
}
