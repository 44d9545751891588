package deploy

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strings"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/publish"
)

// Accounts answers what the user checks need to know about this machine's
// accounts; SystemAccounts reads the system's (os/user), tests give a
// table.
type Accounts interface {
	// LookupUser gives a user's uid and the gids of its groups (primary
	// first); found is false when no such user exists.
	LookupUser(name string) (uid string, gids []string, found bool, err error)
	// LookupGroup gives a group's gid; found is false when it does not exist.
	LookupGroup(name string) (gid string, found bool, err error)
}

// SystemAccounts are this machine's accounts.
type SystemAccounts struct{}

func (SystemAccounts) LookupUser(name string) (string, []string, bool, error) {
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

func (SystemAccounts) LookupGroup(name string) (string, bool, error) {
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

// NoAccounts knows no account: the checks judge the names only.
type NoAccounts struct{}

func (NoAccounts) LookupUser(string) (string, []string, bool, error) { return "", nil, false, nil }
func (NoAccounts) LookupGroup(string) (string, bool, error)          { return "", false, nil }

// CheckUsers refuses, for each selected host, an SFTP user
// (services.bento.user) that would give the host more than its own chroot:
// root; a user another deployed host of the fleet (selected or not) also
// has, who would read its reports and secrets; and, when group (the
// server's host group) exists on this machine, an existing user outside
// it, whom sshd's Match Group block does not lock into internal-sftp and
// its chroot. A user that does not exist yet is publish's to report. The
// result maps each refused host to why, with the fix (a *fleet.HostError).
func CheckUsers(all, selected []fleet.Host, group string, db Accounts) (map[string]error, error) {
	c, err := newUserCheck(all, group, db)
	if err != nil {
		return nil, err
	}
	bad := map[string]error{}
	for _, h := range Deployed(selected) {
		why, err := c.refusal(h)
		if err != nil {
			return nil, err
		}
		if why != nil {
			bad[h.Name] = &fleet.HostError{Host: h.Name, Err: why}
		}
	}
	return bad, nil
}

// userCheck is what CheckUsers judges each host's user against.
type userCheck struct {
	db Accounts
	// byUser lists the deployed hosts of each user.
	byUser map[string][]string
	// group is the host group; gid its id when groupExists.
	group       string
	gid         string
	groupExists bool
}

func newUserCheck(all []fleet.Host, group string, db Accounts) (*userCheck, error) {
	c := &userCheck{db: db, byUser: map[string][]string{}, group: group}
	for _, h := range Deployed(all) {
		c.byUser[h.Options.User] = append(c.byUser[h.Options.User], h.Name)
	}
	if group != "" {
		var err error
		if c.gid, c.groupExists, err = db.LookupGroup(group); err != nil {
			return nil, fmt.Errorf("looking up the host group %q: %w", group, err)
		}
	}
	return c, nil
}

// refusal is why host h's user is refused, nil when it is not; err: the
// user could not be looked up.
func (c *userCheck) refusal(h fleet.Host) (why, err error) {
	// Before the build, like every refusal here; publish checks it again.
	if err := publish.CheckHostName(h.Name); err != nil {
		return err, nil
	}
	u := h.Options.User
	if u == "root" {
		return fmt.Errorf("services.bento.user is \"root\": a host must log in as an unprivileged user of its own, or it could reach every chroot and the server itself; set services.bento.user on host %s to a name of its own (the default is its host name)", h.Name), nil
	}
	if why := c.shared(h); why != nil {
		return why, nil
	}
	uid, gids, found, err := c.db.LookupUser(u)
	if err != nil {
		return nil, &fleet.HostError{Host: h.Name, Err: fmt.Errorf("looking up SFTP user %q: %w", u, err)}
	}
	switch {
	case !found:
	case uid == "0":
		return fmt.Errorf("SFTP user %q has uid 0 on this server: a host must log in as an unprivileged user of its own; set services.bento.user on host %s to a name of its own", u, h.Name), nil
	case c.groupExists && !slices.Contains(gids, c.gid):
		return fmt.Errorf("SFTP user %q is not in the group %q of the hosts' users, so sshd's Match Group block does not lock it into internal-sftp and its chroot: list the host in services.bento-server.hosts (which puts its user in services.bento-server.group), or add the user to %s", u, c.group, c.group), nil
	}
	return nil, nil
}

// shared refuses a user that other deployed hosts have too.
func (c *userCheck) shared(h fleet.Host) error {
	u := h.Options.User
	others := slices.DeleteFunc(slices.Clone(c.byUser[u]), func(n string) bool { return n == h.Name })
	if len(others) == 0 {
		return nil
	}
	hosts := "host"
	if len(others) > 1 {
		hosts = "hosts"
	}
	return fmt.Errorf("services.bento.user %q is also the user of %s %s: hosts sharing a user read each other's reports and secrets; give each host its own services.bento.user (the default is its host name)", u, hosts, strings.Join(others, ", "))
}

// SortedErrors lists the refusals of CheckUsers in host order.
func SortedErrors(bad map[string]error) []error {
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

// Deployed keeps the hosts bento publishes (managed and enabled).
func Deployed(hosts []fleet.Host) []fleet.Host {
	return slices.DeleteFunc(slices.Clone(hosts), func(h fleet.Host) bool { return !h.Deployed() })
}

// Skipped is a selected host that bento does not build or deploy, and why.
type Skipped struct {
	Host   string `json:"host"`
	Reason string `json:"reason"`
}

// SplitDeployed keeps the hosts bento deploys and explains the others.
func SplitDeployed(selected []fleet.Host) (hosts []fleet.Host, skipped []Skipped) {
	hosts = Deployed(selected)
	for _, h := range selected {
		switch {
		case !h.Managed:
			skipped = append(skipped, Skipped{h.Name, "not managed by bento (its configuration does not import the bento module)"})
		case !h.Enable:
			skipped = append(skipped, Skipped{h.Name, "disabled (services.bento.enable = false)"})
		}
	}
	return hosts, skipped
}
