// Package mirror copies the primary bento server's publications to other
// bento servers (mirrors) and brings the hosts' reports back from them.
//
// A mirror is a bento server whose chroots are laid out like the
// primary's (the same hosts, each with its SFTP user and a reports/ it
// owns). Push logs in to it over SSH as an account allowed to write its
// chroot root (root, restricted to internal-sftp) and, per host, copies
// what the host reads — objects/, cache/, secrets/, then manifest.json
// last by rename — and nothing a host wrote (reports/). A mirror holds no
// signing key: with signed manifests it can withhold or delay a
// publication, never forge or replay one (docs/mirrors.md).
//
// PullReports reads each host's reports/status.json (and its log) from a
// mirror, treating both as hostile, and keeps the newest report in the
// primary's chroot, so bento status sees every host whichever server it
// reached.
package mirror

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// Dest is one mirror: ssh://user@host:port/chroot-root.
type Dest struct {
	User string
	Host string
	Port int
	// Root is the mirror's chroot root, an absolute path.
	Root string
}

// Addr is "host:port".
func (d Dest) Addr() string { return net.JoinHostPort(d.Host, strconv.Itoa(d.Port)) }

// String is the destination as written on the command line (no
// password: there is none), escaped as a URL: what ParseDest read prints
// back to the same destination, whatever its user, zone or path hold.
func (d Dest) String() string {
	return (&url.URL{Scheme: "ssh", User: url.User(d.User), Host: d.Addr(), Path: d.Root}).String()
}

// ParseDest reads ssh://user@host[:port]/path. The user defaults to
// root, the port to 22; the path is the mirror's chroot root and must be
// absolute and clean.
func ParseDest(s string) (Dest, error) {
	bad := func(why string) (Dest, error) {
		return Dest{}, fmt.Errorf("mirror %q: %s (want ssh://user@host:port/var/lib/bento/chroots)", s, why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	if why := urlShapeProblem(u); why != "" {
		return bad(why)
	}
	d := Dest{User: u.User.Username(), Host: u.Hostname(), Port: 22, Root: u.Path}
	if d.User == "" {
		d.User = "root"
	}
	if why := hostProblem(d.Host); why != "" {
		return bad(why)
	}
	if p := u.Port(); p != "" {
		n, ok := tcpPort(p)
		if !ok {
			return bad("port " + p + " is not a TCP port")
		}
		d.Port = n
	}
	if !validRoot(d.Root) {
		return bad("the path must be the mirror's chroot root, absolute and clean, not /")
	}
	return d, nil
}

// urlShapeProblem says what makes u no ssh:// destination ("" when nothing).
func urlShapeProblem(u *url.URL) string {
	if u.Scheme != "ssh" {
		return "the scheme must be ssh://"
	}
	if u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return "no query or fragment"
	}
	if _, has := u.User.Password(); has {
		return "no password: push logs in with a key"
	}
	return ""
}

// hostProblem says what is wrong with a destination's host ("" when nothing).
func hostProblem(h string) string {
	if h == "" {
		return "no host"
	}
	if !validHost(h) {
		return "the host " + strconv.Quote(h) + " is neither a host name nor an IP address"
	}
	return ""
}

// tcpPort reads a port number, 1 to 65535.
func tcpPort(p string) (int, bool) {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return 0, false
	}
	return n, true
}

// validRoot accepts an absolute, clean path other than /.
func validRoot(r string) bool {
	return strings.HasPrefix(r, "/") && path.Clean(r) == r && r != "/"
}

// validHost accepts an IP address or a DNS name (letters, digits, '-',
// '.', '_'), so that what was parsed prints back the same.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasPrefix(h, "-") {
		return false
	}
	return strings.IndexFunc(h, func(c rune) bool { return !hostNameChar(c) }) < 0
}

// hostNameChar is a character of a DNS name as validHost takes it.
func hostNameChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_'
}
