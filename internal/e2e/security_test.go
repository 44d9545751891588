package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/manifest"
)

func TestWrongServerHostKeyIsRefused(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.Publish(t)
	h := e.Host(t, "alpha")
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ssh.NewPublicKey(pub)
	h.Settings["serverHostKey"] = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other)))
	res := h.Run(t)
	if res.ExitCode != 1 {
		t.Errorf("exit %d, want 1", res.ExitCode)
	}
	for _, want := range []string{"presented host key ssh-ed25519 " + ssh.FingerprintSHA256(e.SSHD.HostKey), "not the configured serverHostKey", "refusing to connect"} {
		if !strings.Contains(res.Output(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(res.Output(), "retrying") {
		t.Error("a wrong host key was retried: it never gets better")
	}
	if h.ProfileTarget(t) != "" || h.Status(t) != nil {
		t.Error("something was applied or reported through an unverified server")
	}
	if _, err := os.Stat(filepath.Join(h.StateDir, "config")); err == nil {
		if vs, _ := os.ReadDir(filepath.Join(h.StateDir, "config")); len(vs) != 0 {
			t.Errorf("files were downloaded from an unverified server: %v", vs)
		}
	}
}

func TestAHostCannotReadAnotherHostsChroot(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	e.Publish(t)
	alpha, beta := e.Host(t, "alpha"), e.Host(t, "beta")

	// alpha's key offered as beta's user: the server refuses it.
	alpha.Settings["user"] = beta.SSH.User
	res := alpha.Run(t)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "the server refused this host's key") {
		t.Errorf("alpha's key as beta's user: exit %d", res.ExitCode)
	}
	delete(alpha.Settings, "user")

	// alpha's identity configured as host beta: it reads alpha's own
	// chroot, whose manifest names alpha, and refuses it.
	alpha.Settings["host"] = "beta"
	res = alpha.Run(t)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), `is for host "alpha", not "beta"`) || !strings.Contains(res.Output(), `set services.bento.host = "alpha";`) {
		t.Errorf("alpha posing as beta: exit %d", res.ExitCode)
	}
	if alpha.ProfileTarget(t) != "" {
		t.Error("alpha applied something while posing as beta")
	}
	delete(alpha.Settings, "host")

	// Over SFTP with alpha's key, beta's files are out of reach.
	c := e.SSHD.SFTP(t, alpha.SSH)
	for _, p := range []string{"../beta/manifest.json", "/beta/manifest.json", "../../beta/" + manifest.ConfigDir, e.Chroot("beta") + "/manifest.json"} {
		if f, err := c.Open(p); err == nil {
			data := make([]byte, 64)
			n, _ := f.Read(data)
			f.Close()
			if strings.Contains(string(data[:n]), `"beta"`) {
				t.Errorf("alpha read beta's %s", p)
			}
		}
	}
	// alpha cannot write outside its reports/.
	if f, err := c.Create(manifest.ManifestFile); err == nil {
		f.Close()
		t.Error("alpha could replace its own manifest.json")
	}
}

func TestUnsafeManifestIsRefused(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	m := e.Manifest(t, "alpha")
	m.Version = "e0110000e0110000"
	m.Files = append(m.Files, manifest.File{Path: "../../etc/passwd", Mode: 0o644, Size: 5, SHA256: strings.Repeat("0", 64)})
	e.WriteManifest(t, "alpha", m)
	res := h.Run(t)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), `unsafe path "../../etc/passwd"`) {
		t.Errorf("exit %d; the output must name the unsafe path", res.ExitCode)
	}
	// Where "../../etc/passwd" lands when joined to the trees the agent
	// writes (other tests add users, so /etc/passwd itself may change under
	// us): none of these may exist.
	for _, base := range []string{
		filepath.Join(h.StateDir, "config", m.Version),
		filepath.Join(h.StateDir, "config", "staging"),
		filepath.Join(h.StateDir, "config"),
		h.StateDir,
	} {
		p := filepath.Join(base, "../../etc/passwd")
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("the agent wrote %s", p)
		}
	}
	if h.ProfileTarget(t) != v1.Built || len(h.Switches(t)) != 1 {
		t.Error("the host acted on an unsafe manifest")
	}
	st := h.Status(t)
	if st.Result != manifest.ResultFailure || st.SeenVersion != m.Version || !strings.Contains(st.Error, "unsafe path") || st.AppliedVersion != v1.Version {
		t.Errorf("status after an unsafe manifest: %+v", st)
	}
	matches, _ := filepath.Glob(filepath.Join(h.StateDir, "*", "*", "etc", "passwd"))
	if len(matches) > 0 {
		t.Errorf("wrote %v", matches)
	}
}

func TestManifestFromANewerBentoIsReported(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	m := e.Manifest(t, "alpha")
	m.Format, m.Version = manifest.ManifestFormat+1, "f0000000000000aa"
	e.WriteManifest(t, "alpha", m)
	res := h.Run(t)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "upgrade bento") {
		t.Errorf("exit %d; the output must say to upgrade", res.ExitCode)
	}
	st := h.Status(t)
	if st.Result != manifest.ResultFailure || st.SeenVersion != m.Version || !strings.Contains(st.Error, fmt.Sprintf("format %d", manifest.ManifestFormat+1)) || st.AppliedVersion != v1.Version {
		t.Errorf("status: %+v", st)
	}
	// Reported once, not on every tick.
	res = h.Run(t)
	if res.ExitCode != 1 || len(h.Logs(t)) != 2 {
		t.Errorf("second tick: exit %d, logs %v (want the failure reported once)", res.ExitCode, h.Logs(t))
	}
}
