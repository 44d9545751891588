package trigger

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// The kernel's socket tables. /proc/self/net, not /proc/net: the tables
// of this process's network namespace, the one its listener lives in.
var procNetTables = []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"}

const (
	// A line of /proc/net/tcp6 is about 180 bytes; a longer one is not a
	// socket table.
	maxProcLine = 4096
	// Every socket of the host is one line: bound the scan so a table
	// that never ends cannot stall the accept loop.
	maxProcLines = 1 << 22
	// tcpEstablished is the st column of an open connection. Only such a
	// line names the process that connected: a TIME_WAIT entry with the
	// same ports shows uid 0.
	tcpEstablished = "01"
)

// peerUID returns the user id of the process at the other end of c: from
// SO_PEERCRED on a unix socket, from the kernel's socket table on a TCP
// loopback connection (the client's socket is the one whose local address
// is our remote one and whose remote address is our local one).
func peerUID(c net.Conn) (uint32, error) {
	switch c := c.(type) {
	case *net.UnixConn:
		return unixPeerUID(c)
	case *net.TCPConn:
		return tcpPeerUID(c)
	}
	return 0, fmt.Errorf("cannot tell who is at the other end of a %T", c)
}

func unixPeerUID(c *net.UnixConn) (uint32, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred.Uid, nil
}

func tcpPeerUID(c *net.TCPConn) (uint32, error) {
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		return 0, errors.New("not a TCP connection")
	}
	if !remote.IP.IsLoopback() {
		return 0, fmt.Errorf("connection from %s, which is not a loopback address", remote)
	}
	var errs []error
	for _, table := range procNetTables {
		uid, found, err := tableUID(table, remote, local)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if found {
			return uid, nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no socket from %s to %s in %s (did the client go away?)", remote, local, strings.Join(procNetTables, " or "))
}

func tableUID(table string, from, to *net.TCPAddr) (uint32, bool, error) {
	f, err := os.Open(table)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil // no IPv6 in this kernel
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	uid, found, err := socketOwner(f, from, to)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", table, err)
	}
	return uid, found, nil
}

// socketOwner scans a /proc/net/tcp or tcp6 table for the established
// socket whose local address is from and whose remote address is to, and
// returns its owner's uid. Malformed lines are skipped; a table that is
// too long, or two different owners for one connection, is an error.
func socketOwner(r io.Reader, from, to *net.TCPAddr) (uid uint32, found bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 512), maxProcLine)
	for n := 0; sc.Scan(); n++ {
		if n == 0 {
			continue // the header
		}
		if n > maxProcLines {
			return 0, false, fmt.Errorf("more than %d sockets: gave up looking for the client's", maxProcLines)
		}
		u, ok := lineOwner(sc.Text(), from, to)
		if !ok {
			continue
		}
		if found && u != uid {
			return 0, false, fmt.Errorf("two owners (%d and %d) for the connection from %s", uid, u, from)
		}
		uid, found = u, true
	}
	if err := sc.Err(); err != nil {
		return 0, false, err
	}
	return uid, found, nil
}

// lineOwner reads one line of a socket table: the owner's uid when it is
// the established socket from from to to (false for any other line,
// malformed ones included).
func lineOwner(line string, from, to *net.TCPAddr) (uint32, bool) {
	// sl local_address rem_address st tx:rx tr:when retrnsmt uid ...
	f := strings.Fields(line)
	if len(f) < 8 || f[3] != tcpEstablished {
		return 0, false
	}
	local, err1 := parseProcAddr(f[1])
	remote, err2 := parseProcAddr(f[2])
	if err1 != nil || err2 != nil || !sameAddr(local, from) || !sameAddr(remote, to) {
		return 0, false
	}
	u, err := strconv.ParseUint(f[7], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(u), true
}

// parseProcAddr reads "0100007F:1F90": the address as the kernel's 32-bit
// words, each printed in the host's byte order, then the port.
func parseProcAddr(s string) (*net.TCPAddr, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok || (len(h) != 8 && len(h) != 32) || len(p) != 4 {
		return nil, fmt.Errorf("bad address %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return nil, fmt.Errorf("bad address %q", s)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return nil, fmt.Errorf("bad port in %q", s)
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, nil
}

// sameAddr compares ports and addresses, an IPv4 address equal to its
// IPv4-mapped IPv6 form (a dual-stack socket shows the latter).
func sameAddr(a, b *net.TCPAddr) bool {
	return a.Port == b.Port && a.IP.Equal(b.IP)
}

// authorize says whether uid may trigger a tick: root always, another
// user when it belongs (as primary or supplementary group, per the user
// database) to one of groups. Group names are looked up on every
// connection, so a change to /etc/group applies at once. The reason is a
// one-line message for the refused client.
func authorize(uid uint32, groups []string) (bool, string) {
	if uid == 0 {
		return true, ""
	}
	who := fmt.Sprintf("uid %d", uid)
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err == nil {
		who = fmt.Sprintf("user %s (uid %d)", u.Username, uid)
	}
	refusal := func(why string) (bool, string) {
		list := "none: root only"
		if len(groups) > 0 {
			list = strings.Join(groups, ", ")
		}
		return false, fmt.Sprintf("%s may not trigger a tick: %s; only root and members of services.bento.trigger.allowedGroups (%s) may (agent config trigger.allowedGroups, flag --trigger-allowed-groups)", who, why, list)
	}
	if err != nil {
		return refusal("it is not in the user database")
	}
	mine, err := u.GroupIds()
	if err != nil {
		return refusal("its groups cannot be read: " + err.Error())
	}
	for _, name := range groups {
		g, err := user.LookupGroup(name)
		if err != nil {
			continue // a group that does not exist here has no members
		}
		if slices.Contains(mine, g.Gid) {
			return true, ""
		}
	}
	return refusal("it is in none of the allowed groups")
}
