package sshdtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// AddHost creates host's system user and chroot and returns its identity.
// The user is removed when t's cleanups run (and at the latest when the
// Server's do). Root/<host> (root:root 0755) and Root/<host>/reports (owned
// by the user, 0755) are created if missing; existing ones are kept, so the
// deploy step may have made them first.
func (s *Server) AddHost(t testing.TB, host string) *Client {
	t.Helper()
	if !hostRE.MatchString(host) {
		t.Fatalf("sshdtest: invalid host name %q: must match %s", host, hostRE)
	}
	home := filepath.Join(s.Root, host)

	signer, keyFile, authorized := newIdentity(t, host)

	name := s.addUser(t, host, home)
	t.Cleanup(func() { s.removeUser(t, name) })
	uid, gid := lookupIDs(t, name)

	// The file, not the chroot, holds the key: a host must not be able to
	// add keys for itself, and StrictModes wants the file and every
	// directory above it root-owned.
	if err := os.WriteFile(filepath.Join(s.StateDir, "keys", name), authorized, 0o644); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	mkdir0755(t, home, func() {
		s.mu.Lock()
		s.own.Dirs = append(s.own.Dirs, home)
		s.mu.Unlock()
		s.saveOwner(t)
	})
	if err := checkRootOwnedPath(home); err != nil {
		t.Fatalf("sshdtest: sshd would refuse to chroot %s into %s: %v", name, home, err)
	}
	reports := filepath.Join(home, "reports")
	mkdir0755(t, reports, func() {})
	// Also when it already existed: a deploy step that ran before AddHost
	// could not have known the user.
	if err := os.Lchown(reports, uid, gid); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}

	return &Client{Host: host, User: name, KeyFile: keyFile, Signer: signer}
}

// newIdentity makes a fresh ed25519 key for name: its signer, the private
// key file (with a .pub beside it) and its authorized_keys line.
func newIdentity(t testing.TB, name string) (ssh.Signer, string, []byte) {
	t.Helper()
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
	return signer, keyFile, authorized
}

// lookupIDs is the uid and gid of a user just created.
func lookupIDs(t testing.TB, login string) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(login)
	if err != nil {
		t.Fatalf("sshdtest: looking up the user just created: %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// mkdir0755 creates dir with mode 0755 unless it exists, calling made
// as soon as it exists (so that it is recorded for removal even if what
// follows fails). Mkdir's mode is filtered by the umask; sshd wants exactly
// "not group/world-writable", but the deploy step and the agent expect 0755.
func mkdir0755(t testing.TB, dir string, made func()) {
	t.Helper()
	err := os.Mkdir(dir, 0o755)
	if errors.Is(err, os.ErrExist) {
		return
	}
	if err == nil {
		made()
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
}

// addUser creates the host's system user: home = its chroot, primary group =
// the chrooted group, no usable shell, password "*". The password matters:
// useradd's default "!" marks the account locked, and with UsePAM no sshd
// refuses locked accounts even for key logins; "*" just means "no password".
func (s *Server) addUser(t testing.TB, host, home string) string {
	t.Helper()
	shell := "/usr/sbin/nologin"
	if _, err := os.Stat(shell); err != nil {
		shell = "/bin/false"
	}
	return s.useradd(t, host, home, shell, "bento test host "+host)
}

// useradd creates a system user for name in the server's group, under a
// fresh random login (retried when taken), recorded before it exists so
// that the reaper removes it whatever happens next.
func (s *Server) useradd(t testing.TB, name, home, shell, comment string) string {
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
			"--home-dir", home, "--gid", s.Group, "--shell", shell,
			"--password", "*", "--comment", comment, login)
		if err == nil {
			return login
		}
		s.forgetUser(login)
		if code != 9 || i == 5 { // 9: name already in use
			t.Fatalf("sshdtest: useradd %s: %v (exit %d): %s", login, err, code, out)
		}
	}
}

func (s *Server) forgetUser(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, u := range s.own.Users {
		if u == name {
			s.own.Users = append(s.own.Users[:i], s.own.Users[i+1:]...)
			return true
		}
	}
	return false
}

func (s *Server) removeUser(t testing.TB, name string) {
	if !s.forgetUser(name) {
		return // already removed by an earlier cleanup
	}
	if err := deleteUser(name); err != nil {
		t.Errorf("sshdtest: %v", err)
	}
	os.Remove(filepath.Join(s.StateDir, "keys", name))
	s.saveOwner(t)
}

// deleteUser removes a user; -f because sshd may still be tearing down the
// user's last session, which would make plain userdel refuse.
func deleteUser(name string) error {
	code, out, err := accountTool("userdel", "-f", name)
	if err != nil && code != 6 { // 6: no such user
		return fmt.Errorf("userdel %s: %v: %s", name, err, out)
	}
	return nil
}

// accountTool runs useradd/userdel/groupadd/groupdel and returns its exit
// code and output.
func accountTool(name string, args ...string) (int, string, error) {
	accountMu.Lock()
	defer accountMu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err == nil {
			return 0, "", nil
		}
		code := -1
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			return code, strings.TrimSpace(string(out)), err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writePrivateKey(t testing.TB, path string, priv ed25519.PrivateKey, comment string) {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// accountMu serialises this process's shadow tools; other processes (other
// test binaries) are handled by retrying, because useradd and friends fail
// at once, rather than wait, when /etc/passwd is locked.
var accountMu sync.Mutex
