package status

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A secret the host could not install shows in the message and in JSON,
// whatever the host's state, and its content is never there to show.
func TestSecretErrors(t *testing.T) {
	cases := []struct {
		name    string
		errs    map[string]string
		message string // "" means the message must not mention secrets
	}{
		{"none", nil, ""},
		{"one", map[string]string{"api": `secret api: owner "svc": no such user on this host (create it, or fix services.bento.secrets.api.owner)`},
			`1 secret not installed (api: owner "svc": no such user on this host`},
		{"two, sorted", map[string]string{"wg": "the server publishes secret wg but this host declares no services.bento.secrets.wg", "db": "secret db: group \"pg\": no such group"},
			`2 secrets not installed (db: group "pg": no such group; wg: the server publishes secret wg`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newChroot(t)
			c.publish("pi", v1, now.Add(-time.Hour), sysA)
			rep := applied(v1, sysA, now.Add(-time.Minute))
			rep.SecretErrors = tc.errs
			c.report("pi", rep)
			s, err := Collect(context.Background(), Options{Root: c.root, Now: now})
			if err != nil {
				t.Fatal(err)
			}
			r := s.Hosts[0]
			if r.State != UpToDate || len(r.SecretErrors) != len(tc.errs) {
				t.Errorf("state %s, secretErrors %v", r.State, r.SecretErrors)
			}
			if tc.message != "" && !strings.Contains(r.Message, tc.message) {
				t.Errorf("message %q lacks %q", r.Message, tc.message)
			}
			if tc.message == "" && strings.Contains(r.Message, "secret") {
				t.Errorf("message %q mentions secrets", r.Message)
			}
		})
	}
}
