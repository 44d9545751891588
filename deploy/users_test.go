package deploy

import (
	"slices"
	"strings"
	"testing"

	"github.com/bento-nix/bento/fleet"
)

// tableAccounts is an account database given as a table: users with their
// uid and gids, groups with their gid.
type tableAccounts struct {
	users  map[string][]string // name → uid, then gids
	groups map[string]string
}

func (a tableAccounts) LookupUser(name string) (string, []string, bool, error) {
	u, ok := a.users[name]
	if !ok {
		return "", nil, false, nil
	}
	return u[0], u[1:], true, nil
}

func (a tableAccounts) LookupGroup(name string) (string, bool, error) {
	g, ok := a.groups[name]
	return g, ok, nil
}

func TestCheckUsers(t *testing.T) {
	host := func(name, user string) fleet.Host {
		return fleet.Host{Name: name, Managed: true, Enable: true, Options: fleet.Options{User: user}}
	}
	accounts := tableAccounts{
		users: map[string][]string{
			"alpha": {"1001", "900"},        // in bento (gid 900)
			"beta":  {"1002", "100"},        // outside it
			"toor":  {"0", "0"},             // root under another name
			"gamma": {"1003", "100", "900"}, // bento as a supplementary group
		},
		groups: map[string]string{"bento": "900"},
	}
	tests := []struct {
		name     string
		all      []fleet.Host
		selected []string // nil: all
		group    string
		db       Accounts
		want     map[string][]string // host → words its refusal must contain
	}{
		{
			name: "own users in the group",
			all:  []fleet.Host{host("alpha", "alpha"), host("gamma", "gamma")},
			want: map[string][]string{},
		},
		{
			name: "root by name",
			all:  []fleet.Host{host("alpha", "alpha"), host("web", "root")},
			want: map[string][]string{"web": {`host web: services.bento.user is "root"`, "set services.bento.user on host web"}},
		},
		{
			name: "root by uid",
			all:  []fleet.Host{host("web", "toor")},
			want: map[string][]string{"web": {`SFTP user "toor" has uid 0`}},
		},
		{
			name: "shared by two hosts: both refused, each naming the other",
			all:  []fleet.Host{host("a", "shared"), host("b", "shared"), host("alpha", "alpha")},
			want: map[string][]string{
				"a": {`host a: services.bento.user "shared" is also the user of host b`, "give each host its own services.bento.user"},
				"b": {`is also the user of host a`},
			},
		},
		{
			name:     "shared with a host not selected",
			all:      []fleet.Host{host("a", "shared"), host("b", "shared"), host("c", "shared")},
			selected: []string{"a"},
			want:     map[string][]string{"a": {"is also the user of hosts b, c"}},
		},
		{
			name: "shared with a disabled host is no sharing",
			all:  []fleet.Host{host("alpha", "alpha"), {Name: "old", Managed: true, Enable: false, Options: fleet.Options{User: "alpha"}}},
			want: map[string][]string{},
		},
		{
			name: "outside the host group",
			all:  []fleet.Host{host("beta", "beta"), host("alpha", "alpha")},
			want: map[string][]string{"beta": {`SFTP user "beta" is not in the group "bento"`, "services.bento-server.hosts"}},
		},
		{
			name:  "no host group on this machine: membership is not judged",
			all:   []fleet.Host{host("beta", "beta")},
			group: "fleet",
			want:  map[string][]string{},
		},
		{
			name: "a user that does not exist yet is publish's to report",
			all:  []fleet.Host{host("new", "new")},
			want: map[string][]string{},
		},
		{
			name: "names only (--no-user-check)",
			all:  []fleet.Host{host("beta", "beta"), host("web", "toor"), host("x", "root")},
			db:   NoAccounts{},
			want: map[string][]string{"x": {`"root"`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			group := tt.group
			if group == "" {
				group = "bento"
			}
			db := tt.db
			if db == nil {
				db = accounts
			}
			selected := tt.all
			if tt.selected != nil {
				selected = slices.DeleteFunc(slices.Clone(tt.all), func(h fleet.Host) bool { return !slices.Contains(tt.selected, h.Name) })
			}
			bad, err := CheckUsers(tt.all, selected, group, db)
			if err != nil {
				t.Fatal(err)
			}
			for h, words := range tt.want {
				err := bad[h]
				if err == nil {
					t.Errorf("host %s not refused", h)
					continue
				}
				for _, w := range words {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("host %s: %q lacks %q", h, err, w)
					}
				}
			}
			for h, err := range bad {
				if _, ok := tt.want[h]; !ok {
					t.Errorf("host %s refused: %v", h, err)
				}
			}
		})
	}
}
