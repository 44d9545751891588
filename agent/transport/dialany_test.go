package transport

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// mirrorOf starts a second server holding the same host, which logs in
// there with the same key (under the mirror's own user name).
func mirrorOf(t *testing.T, primary *server) (*server, Endpoint) {
	t.Helper()
	m := startServer(t)
	key := ssh.MarshalAuthorizedKey(primary.client.Signer.PublicKey())
	if err := os.WriteFile(filepath.Join(m.sshd.StateDir, "keys", m.client.User), key, 0o644); err != nil {
		t.Fatal(err)
	}
	return m, Endpoint{Addr: m.sshd.Addr, User: m.client.User, HostKeys: []ssh.PublicKey{m.sshd.HostKey}}
}

func endpoint(s *server) Endpoint {
	return Endpoint{Addr: s.sshd.Addr, User: s.client.User, HostKeys: []ssh.PublicKey{s.sshd.HostKey}}
}

func TestDialAnyFailsOver(t *testing.T) {
	primary := startServer(t)
	mirror, mirrorEP := mirrorOf(t, primary)
	wrongKey := endpoint(primary)
	wrongKey.HostKeys = []ssh.PublicKey{mirror.sshd.HostKey}

	cases := []struct {
		name string
		prep func(t *testing.T)
		eps  []Endpoint
		// want is the index reached, -1 for none.
		want int
		// dials is how many TCP connections the call opens.
		dials  int32
		errHas []string
	}{
		{name: "primary answers", eps: []Endpoint{endpoint(primary), mirrorEP}, want: 0, dials: 1},
		{name: "primary down: the mirror in the same round", prep: func(t *testing.T) { primary.sshd.Stop(); t.Cleanup(func() { primary.sshd.Restart(t) }) },
			eps: []Endpoint{endpoint(primary), mirrorEP}, want: 1, dials: 2},
		{name: "wrong key on the first: the next one, the first never again", eps: []Endpoint{wrongKey, mirrorEP}, want: 1, dials: 2},
		{name: "both down: every round tries both", prep: func(t *testing.T) {
			primary.sshd.Stop()
			mirror.sshd.Stop()
			t.Cleanup(func() { primary.sshd.Restart(t); mirror.sshd.Restart(t) })
		}, eps: []Endpoint{endpoint(primary), mirrorEP}, want: -1, dials: 6, errHas: []string{"none of the 2 servers reachable (3 rounds)", primary.sshd.Addr, mirror.sshd.Addr}},
		{name: "only wrong keys: one round", eps: []Endpoint{wrongKey}, want: -1, dials: 1, errHas: []string{"not the configured serverHostKey"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prep != nil {
				tc.prep(t)
			}
			m := &meter{}
			o := primary.options(m)
			c, i, err := DialAny(context.Background(), o, tc.eps)
			if tc.want < 0 {
				if err == nil {
					c.Close()
					t.Fatalf("connected to %d", i)
				}
				for _, s := range tc.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q", err, s)
					}
				}
			} else {
				if err != nil {
					t.Fatalf("DialAny: %v", err)
				}
				defer c.Close()
				if i != tc.want || c.Addr() != tc.eps[tc.want].Addr {
					t.Errorf("reached %d (%s), want %d", i, c.Addr(), tc.want)
				}
				// A connection that works: the host's own manifest there.
				if _, err := c.Stat(context.Background(), "manifest.json"); err != nil {
					t.Errorf("stat over the connection: %v", err)
				}
			}
			if got := m.dials.Load(); got != tc.dials {
				t.Errorf("%d dials, want %d", got, tc.dials)
			}
		})
	}
}

func TestPermanentOfAllFailed(t *testing.T) {
	hk := &HostKeyError{Addr: "a:22", Got: nil}
	down := errors.New("connection refused")
	for _, tc := range []struct {
		errs []error
		want bool
	}{
		{[]error{fmtWrap(ErrAuth), hk}, true},
		{[]error{fmtWrap(ErrAuth), down}, false},
		{nil, false},
	} {
		if got := Permanent(&AllFailedError{Errs: tc.errs}); got != tc.want {
			t.Errorf("Permanent(%v) = %v, want %v", tc.errs, got, tc.want)
		}
	}
}

func fmtWrap(err error) error { return errors.Join(errors.New("server x"), err) }
