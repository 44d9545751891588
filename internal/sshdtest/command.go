package sshdtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
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
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	writePrivateKey(t, keyFile, priv, "bento-test-"+name)
	authorized := ssh.MarshalAuthorizedKey(signer.PublicKey())
	if err := os.WriteFile(keyFile+".pub", authorized, 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	home := filepath.Join(s.base, "home-"+name)
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	login := s.addShellAccount(t, name, home)
	t.Cleanup(func() { s.removeUser(t, login) })
	u, err := user.Lookup(login)
	if err != nil {
		t.Fatalf("sshdtest: looking up the user just created: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
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

// addShellAccount is addUser with a shell and a home of its own.
func (s *Server) addShellAccount(t testing.TB, name, home string) string {
	t.Helper()
	for i := 0; ; i++ {
		login := "bt" + randomHex(4) + "-" + strings.ToLower(name)
		if len(login) > maxUserLen {
			login = login[:maxUserLen]
		}
		s.mu.Lock()
		s.own.Users = append(s.own.Users, login)
		s.mu.Unlock()
		s.saveOwner(t)
		code, out, err := accountTool("useradd", "--system", "--no-create-home",
			"--home-dir", home, "--gid", s.Group, "--shell", "/bin/sh",
			"--password", "*", "--comment", "bento test shell user "+name, login)
		if err == nil {
			return login
		}
		s.forgetUser(login)
		if code != 9 || i == 5 {
			t.Fatalf("sshdtest: useradd %s: %v (exit %d): %s", login, err, code, out)
		}
	}
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
