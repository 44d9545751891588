package sshdtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// shellUser is a login that runs commands instead of the SFTP chroot.
type shellUser struct {
	name string
	env  []string
}

// AddShellUser creates a user that logs in to a shell instead of the SFTP
// chroot, for tests of tools that run a command over SSH (a Nix remote
// builder's nix-daemon --stdio, an ssh-ng:// store). Its home is a fresh
// directory it owns, under the server's state directory; env (KEY=VALUE)
// is set in its sessions with sshd's SetEnv. sshd is restarted with a
// Match User block, placed before the chroot block (sshd keeps the first
// value it obtains for each keyword), that lifts the chroot and the forced
// internal-sftp. The user is removed when t's cleanups run.
func (s *Server) AddShellUser(t testing.TB, name string, env []string) (*Client, string) {
	t.Helper()
	if !hostRE.MatchString(name) {
		t.Fatalf("sshdtest: invalid user name %q: must match %s", name, hostRE)
	}
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" || strings.ContainsAny(kv, "\"\n") {
			t.Fatalf("sshdtest: environment %q: want KEY=VALUE without quotes or newlines", kv)
		}
	}
	signer, keyFile, authorized := newIdentity(t, name)
	home := filepath.Join(s.base, "home-"+name)
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	login := s.useradd(t, name, home, "/bin/sh", "bento test shell user "+name)
	t.Cleanup(func() { s.removeUser(t, login) })
	uid, gid := lookupIDs(t, login)
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := os.WriteFile(filepath.Join(s.StateDir, "keys", login), authorized, 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.mu.Lock()
	s.shells = append(s.shells, shellUser{name: login, env: env})
	s.mu.Unlock()
	s.writeConfig(t)
	s.Restart(t)
	return &Client{Host: name, User: login, KeyFile: keyFile, Signer: signer}, home
}

// shellBlocks is the sshd_config text for the shell users.
func (s *Server) shellBlocks() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, u := range s.shells {
		fmt.Fprintf(&b, "\nMatch User %s\n\tChrootDirectory none\n\tForceCommand none\n", u.name)
		if len(u.env) > 0 {
			fmt.Fprintf(&b, "\tSetEnv")
			for _, kv := range u.env {
				fmt.Fprintf(&b, " \"%s\"", kv)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// AllowPusher lets root log in with a fresh key, to SFTP only and without
// a chroot: the account bento mirror push writes a mirror's chroot root
// as (the chroots are root's, as sshd requires, so only root can). The
// key is restricted the way services.bento-server.mirrorPushKeys does it,
// restrict,command="internal-sftp". sshd is restarted; the key file is
// removed with the server.
func (s *Server) AllowPusher(t testing.TB) *Client {
	t.Helper()
	signer, keyFile, authorized := newIdentity(t, "root")
	line := append([]byte(`restrict,command="internal-sftp" `), authorized...)
	if err := os.WriteFile(filepath.Join(s.StateDir, "keys", "root"), line, 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	s.mu.Lock()
	s.pusher = true
	s.mu.Unlock()
	s.writeConfig(t)
	s.Restart(t)
	return &Client{Host: "root", User: "root", KeyFile: keyFile, Signer: signer}
}
