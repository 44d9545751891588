package main

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/bento-nix/bento/fleet"
)

// DefaultHostGroup is the group of the hosts' SFTP users
// (services.bento-server.group), whose sshd Match block jails them.
const DefaultHostGroup = "bento"

func hostGroupFlag() cli.Flag {
	return &cli.StringFlag{Name: "host-group", Value: DefaultHostGroup, Usage: "the group of the hosts' SFTP users (services.bento-server.group): when it exists here, each host's user must be in it; \"\" skips the check", EnvVars: []string{"BENTO_HOST_GROUP"}}
}

// accountDB answers what the user checks need to know about this machine's
// accounts; the real one reads the system's (os/user), tests give a table.
type accountDB interface {
	// lookupUser gives a user's uid and the gids of its groups (primary
	// first); found is false when no such user exists.
	lookupUser(name string) (uid string, gids []string, found bool, err error)
	// lookupGroup gives a group's gid; found is false when it does not exist.
	lookupGroup(name string) (gid string, found bool, err error)
}

type systemAccounts struct{}

func (systemAccounts) lookupUser(name string) (string, []string, bool, error) {
	u, err := user.Lookup(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return "", nil, false, nil
	}
	if err != nil {
		return "", nil, false, err
	}
	gids, err := u.GroupIds()
	if err != nil {
		return "", nil, false, err
	}
	return u.Uid, append([]string{u.Gid}, gids...), true, nil
}

func (systemAccounts) lookupGroup(name string) (string, bool, error) {
	g, err := user.LookupGroup(name)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return g.Gid, true, nil
}

// noAccounts knows no account: the checks judge the names only.
type noAccounts struct{}

func (noAccounts) lookupUser(string) (string, []string, bool, error) { return "", nil, false, nil }
func (noAccounts) lookupGroup(string) (string, bool, error)          { return "", false, nil }

// checkUsers refuses, for each selected host, an SFTP user
// (services.bento.user) that would give the host more than its own chroot:
// root; a user another deployed host of the fleet (selected or not) also
// has, who would read its reports and secrets; and, when group (the
// server's host group) exists on this machine, an existing user outside
// it, whom sshd's Match Group block does not lock into internal-sftp and
// its chroot. A user that does not exist yet is publish's to report. The
// result maps each refused host to why, with the fix.
func checkUsers(all, selected []fleet.Host, group string, db accountDB) (map[string]error, error) {
	byUser := map[string][]string{}
	for _, h := range deployed(all) {
		byUser[h.Options.User] = append(byUser[h.Options.User], h.Name)
	}
	gid, groupExists := "", false
	if group != "" {
		var err error
		if gid, groupExists, err = db.lookupGroup(group); err != nil {
			return nil, fmt.Errorf("looking up the host group %q: %w", group, err)
		}
	}
	bad := map[string]error{}
	for _, h := range deployed(selected) {
		u := h.Options.User
		if u == "root" {
			bad[h.Name] = fmt.Errorf("host %s: services.bento.user is \"root\": a host must log in as an unprivileged user of its own, or it could reach every chroot and the server itself; set services.bento.user on host %s to a name of its own (the default is its host name)", h.Name, h.Name)
			continue
		}
		if others := slices.DeleteFunc(slices.Clone(byUser[u]), func(n string) bool { return n == h.Name }); len(others) > 0 {
			bad[h.Name] = fmt.Errorf("host %s: services.bento.user %q is also the user of %s %s: hosts sharing a user read each other's reports and secrets; give each host its own services.bento.user (the default is its host name)", h.Name, u, plural(len(others), "host", "hosts"), strings.Join(others, ", "))
			continue
		}
		uid, gids, found, err := db.lookupUser(u)
		if err != nil {
			return nil, fmt.Errorf("host %s: looking up SFTP user %q: %w", h.Name, u, err)
		}
		switch {
		case !found:
		case uid == "0":
			bad[h.Name] = fmt.Errorf("host %s: SFTP user %q has uid 0 on this server: a host must log in as an unprivileged user of its own; set services.bento.user on host %s to a name of its own", h.Name, u, h.Name)
		case groupExists && !slices.Contains(gids, gid):
			bad[h.Name] = fmt.Errorf("host %s: SFTP user %q is not in the group %q of the hosts' users, so sshd's Match Group block does not lock it into internal-sftp and its chroot: list the host in services.bento-server.hosts (which puts its user in services.bento-server.group), or add the user to %s", h.Name, u, group, group)
		}
	}
	return bad, nil
}

// sortedErrors lists the refusals in host order.
func sortedErrors(bad map[string]error) []error {
	names := make([]string, 0, len(bad))
	for n := range bad {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]error, 0, len(names))
	for _, n := range names {
		out = append(out, bad[n])
	}
	return out
}
