package render

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/status"
	"github.com/bento-nix/bento/status/internal/statustest"
)

// A secret the host could not install shows in the message and in JSON,
// whatever the host's state, and its content is never there to show. The
// host keeps its state (it runs what was published), but the exit status
// is 5, the summary line counts it, and Prometheus has a gauge for it, so
// that monitoring keyed on any of them sees it.
func TestSecretErrors(t *testing.T) {
	cases := []struct {
		name    string
		errs    map[string]string
		message string // "" means the message must not mention secrets
		exit    int
		summary string
	}{
		{"none", nil, "", status.ExitUpToDate, "1 host: 1 up-to-date"},
		{"one", map[string]string{"api": `secret api: owner "svc": no such user on this host (create it, or fix services.bento.secrets.api.owner)`},
			`1 secret not installed (api: owner "svc": no such user on this host`, status.ExitFailing, "1 host: 1 up-to-date; 1 with secrets not installed"},
		{"two, sorted", map[string]string{"wg": "the server publishes secret wg but this host declares no services.bento.secrets.wg", "db": "secret db: group \"pg\": no such group"},
			`2 secrets not installed (db: group "pg": no such group; wg: the server publishes secret wg`, status.ExitFailing, "1 host: 1 up-to-date; 1 with secrets not installed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := statustest.New(t)
			c.Publish("pi", statustest.V1, now.Add(-time.Hour), statustest.SysA)
			rep := statustest.Applied(statustest.V1, statustest.SysA, now.Add(-time.Minute))
			rep.SecretErrors = tc.errs
			rep.BytesFetched = 3 << 10
			c.Report("pi", rep)
			s, err := status.Collect(context.Background(), status.Options{Root: c.Root, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			r := s.Hosts[0]
			if r.State != status.UpToDate || len(r.SecretErrors) != len(tc.errs) {
				t.Errorf("state %s, secretErrors %v", r.State, r.SecretErrors)
			}
			if tc.message != "" && !strings.HasPrefix(r.Message, tc.message) {
				t.Errorf("message %q does not start with %q", r.Message, tc.message)
			}
			if tc.message == "" && strings.Contains(r.Message, "secret") {
				t.Errorf("message %q mentions secrets", r.Message)
			}
			if s.ExitCode != tc.exit || s.Summary.SecretErrors != min(1, len(tc.errs)) {
				t.Errorf("exit %d, summary.secretErrors %d; want %d, %d", s.ExitCode, s.Summary.SecretErrors, tc.exit, min(1, len(tc.errs)))
			}
			if got := SummaryLine(s, false); got != tc.summary {
				t.Errorf("summary %q, want %q", got, tc.summary)
			}
			var buf bytes.Buffer
			if err := Prometheus(&buf, s); err != nil {
				t.Fatal(err)
			}
			parser := expfmt.NewTextParser(model.LegacyValidation)
			fams, err := parser.TextToMetricFamilies(&buf)
			if err != nil {
				t.Fatal(err)
			}
			m := fams["bento_host_secret_errors"].GetMetric()
			if len(m) != 1 || m[0].GetGauge().GetValue() != float64(len(tc.errs)) {
				t.Errorf("bento_host_secret_errors = %v, want %d", m, len(tc.errs))
			}
		})
	}
}

// A failing host with secret errors stays failing (exit 5 anyway); a host
// bento no longer deploys does not raise the exit status with the secret
// errors its leftover report names.
func TestSecretErrorsOfHostsNotDeployed(t *testing.T) {
	c := statustest.New(t)
	rep := statustest.Applied(statustest.V1, statustest.SysA, now.Add(-time.Minute))
	rep.SecretErrors = map[string]string{"api": "no such user"}
	for _, h := range []string{"gone", "off"} {
		c.Publish(h, statustest.V1, now.Add(-time.Hour), statustest.SysA)
		c.Report(h, rep)
	}
	f := &fleet.Fleet{Ref: "/fleet", Hosts: []fleet.Host{{Name: "off", Managed: true}}}
	s, err := status.Collect(context.Background(), status.Options{Root: c.Root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if s.ExitCode != status.ExitUpToDate || s.Summary.SecretErrors != 0 {
		t.Errorf("exit %d, summary.secretErrors %d; want 0, 0 (%+v)", s.ExitCode, s.Summary.SecretErrors, s.Hosts)
	}
	if strings.Contains(SummaryLine(s, false), "secret") {
		t.Errorf("summary %q mentions secrets", SummaryLine(s, false))
	}
}

// Within a state, the default sort puts hosts with secrets not installed
// first; facts in a message are separated by "; ".
func TestSecretErrorsSortFirst(t *testing.T) {
	c := statustest.New(t)
	for _, h := range []string{"a", "b", "c"} {
		c.Publish(h, statustest.V1, now.Add(-time.Hour), statustest.SysA)
		rep := statustest.Applied(statustest.V1, statustest.SysA, now.Add(-time.Minute))
		if h == "b" {
			rep.SecretErrors = map[string]string{"api": "no such user"}
			rep.BytesFetched = 2 << 10
		}
		c.Report(h, rep)
	}
	s, err := status.Collect(context.Background(), status.Options{Root: c.Root, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, r := range s.Hosts {
		order = append(order, r.Host)
	}
	if got := strings.Join(order, " "); got != "b a c" {
		t.Errorf("order %q, want %q", got, "b a c")
	}
	if m := s.Hosts[0].Message; m != "1 secret not installed (api: no such user); last update fetched 2.0 KiB" {
		t.Errorf("message %q", m)
	}
	// In colour, its message is red even though its state is green.
	var buf bytes.Buffer
	if err := Table(&buf, s, TableOptions{Color: true}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "\x1b[1;31m1 secret not installed") || strings.Count(buf.String(), "\x1b[1;31m") != 2 {
		t.Errorf("colour table:\n%q", buf.String())
	}
}
