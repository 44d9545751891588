package mirror_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/mirror"
	"github.com/bento-nix/bento/status"
)

// mirrorServer is a second bento server: its own sshd and chroot root,
// the same hosts (each with its own SFTP user there, which accepts the
// host's key), and root allowed to push over SFTP.
type mirrorServer struct {
	sshd   *sshdtest.Server
	pusher *sshdtest.Client
	users  map[string]*sshdtest.Client
}

func startMirror(t *testing.T, e *e2e.Env, hosts ...string) *mirrorServer {
	t.Helper()
	m := &mirrorServer{sshd: sshdtest.Start(t, sshdtest.Options{}), users: map[string]*sshdtest.Client{}}
	for _, h := range hosts {
		c := m.sshd.AddHost(t, h)
		key := ssh.MarshalAuthorizedKey(e.Host(t, h).SSH.Signer.PublicKey())
		if err := os.WriteFile(filepath.Join(m.sshd.StateDir, "keys", c.User), key, 0o644); err != nil {
			t.Fatal(err)
		}
		m.users[h] = c
	}
	m.pusher = m.sshd.AllowPusher(t)
	return m
}

func (m *mirrorServer) dest(t *testing.T) mirror.Dest {
	t.Helper()
	d, err := mirror.ParseDest("ssh://root@" + m.sshd.Addr + m.sshd.Root)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// push runs a push from the primary (e's root) to the mirrors, failing the
// test on any host's error.
func push(t *testing.T, e *e2e.Env, ms ...*mirrorServer) []mirror.HostResult {
	t.Helper()
	res, err := tryPush(t, e, ms...)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("push: %v", r.Err)
		}
	}
	return res
}

func tryPush(t *testing.T, e *e2e.Env, ms ...*mirrorServer) ([]mirror.HostResult, error) {
	t.Helper()
	var dests []mirror.Dest
	var known []byte
	for _, m := range ms {
		dests = append(dests, m.dest(t))
		known = append(known, m.sshd.KnownHostsLine+"\n"...)
	}
	khFile := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(khFile, known, 0o644); err != nil {
		t.Fatal(err)
	}
	kh, err := mirror.LoadKnownHosts(khFile)
	if err != nil {
		t.Fatal(err)
	}
	return mirror.Push(context.Background(), mirror.Options{Root: e.SSHD.Root, Signer: ms[0].pusher.Signer, KnownHosts: kh}, dests)
}

func filesFleet() fixture.Fleet {
	return fixture.Fleet{
		Hosts: []fixture.Host{
			{Name: "alpha", Bento: &fixture.Bento{Enable: true, Secrets: []string{"db"}}},
			{Name: "beta", Bento: &fixture.Bento{Enable: true}},
		},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n", "modules/b.nix": "{ b = 1; }\n"},
	}
}

func TestPushCopiesChrootsIncrementally(t *testing.T) {
	e := e2e.Start(t, filesFleet())
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	os.MkdirAll(filepath.Join(e.SecretsDir, "alpha"), 0o700)
	if err := os.WriteFile(filepath.Join(e.SecretsDir, "alpha", "db"), []byte("hunter2-but-longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.Host(t, "alpha")
	e.Host(t, "beta")
	v1 := e.Publish(t)
	m := startMirror(t, e, "alpha", "beta")

	// A report on the mirror is the host's: a push never touches it.
	mirrorReport := filepath.Join(m.sshd.Root, "beta", manifest.StatusFile)
	if err := os.WriteFile(mirrorReport, []byte(`{"mine":true}`), 0o644); err != nil {
		t.Fatal(err)
	}

	first := push(t, e, m)
	t.Logf("first push: %+v", first)
	if len(first) != 2 {
		t.Fatalf("results %+v", first)
	}
	for _, r := range first {
		if !r.Changed || r.Files < 2 {
			t.Errorf("first push of %s: %+v", r.Host, r)
		}
		got, err := os.ReadFile(filepath.Join(m.sshd.Root, r.Host, manifest.ManifestFile))
		want, _ := os.ReadFile(filepath.Join(e.Chroot(r.Host), manifest.ManifestFile))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: the mirror's manifest differs from the primary's (%v)", r.Host, err)
		}
		man := e.Manifest(t, r.Host)
		for _, f := range man.Files {
			p := filepath.Join(m.sshd.Root, r.Host, filepath.FromSlash(manifest.ObjectPath(f.SHA256)))
			fi, err := os.Stat(p)
			if err != nil || fi.Size() != f.Size || fi.Mode().Perm() != 0o444 {
				t.Errorf("%s: object of %s on the mirror: %v %v", r.Host, f.Path, fi, err)
			}
		}
	}
	if v1["alpha"].Version != e.Manifest(t, "alpha").Version {
		t.Fatal("publication changed under the test")
	}
	// The secret belongs to alpha's user on the mirror, not on the primary.
	secret := filepath.Join(m.sshd.Root, "alpha", manifest.SecretsDir, v1["alpha"].Version, "db")
	fi, err := os.Stat(secret)
	if err != nil {
		t.Fatalf("secret on the mirror: %v", err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	mu := lookupUID(t, m.users["alpha"].User)
	if int(st.Uid) != mu || fi.Mode().Perm() != 0o400 {
		t.Errorf("secret on the mirror: uid %d mode %v, want uid %d (the mirror's alpha user) 0400", st.Uid, fi.Mode().Perm(), mu)
	}
	if data, _ := os.ReadFile(mirrorReport); string(data) != `{"mine":true}` {
		t.Errorf("the push touched the mirror's report: %q", data)
	}

	// Nothing changed: nothing is uploaded.
	for _, r := range push(t, e, m) {
		if r.Files != 0 || r.Changed || r.Bytes != 0 {
			t.Errorf("second push of %s uploaded: %+v", r.Host, r)
		}
	}

	// One file of the fleet changed: its object and the manifests.
	e.Fleet.Files["modules/b.nix"] = "{ b = 2; }\n"
	e.WriteFleet(t, e.Fleet)
	e.Publish(t)
	for _, r := range push(t, e, m) {
		// alpha also has its secrets under the new version.
		want := 2
		if r.Host == "alpha" {
			want = 3
		}
		if r.Files != want || !r.Changed {
			t.Errorf("one-file change, push of %s: %+v, want %d files", r.Host, r, want)
		}
	}
}

func lookupUID(t *testing.T, name string) int {
	t.Helper()
	data, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 3 && f[0] == name {
			var n int
			for _, c := range f[2] {
				n = n*10 + int(c-'0')
			}
			return n
		}
	}
	t.Fatalf("no user %s", name)
	return -1
}

// useServers configures h with the primary first, then each mirror.
func useServers(e *e2e.Env, h *e2e.Host, ms ...*mirrorServer) {
	servers := []map[string]any{{"address": "127.0.0.1", "port": e.SSHD.Port, "hostKey": e.SSHD.KnownHostsLine}}
	for _, m := range ms {
		servers = append(servers, map[string]any{"address": "127.0.0.1", "port": m.sshd.Port, "hostKey": m.sshd.KnownHostsLine, "user": m.users[h.Name].User})
	}
	h.Settings["servers"] = servers
	h.Settings["server"] = ""
	h.Settings["serverHostKey"] = ""
}

func readReport(t *testing.T, file string) *manifest.Report {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	var r manifest.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("report %s: %v", file, err)
	}
	return &r
}

func oneHostFleet() fixture.Fleet {
	return fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n"},
	}
}

// TestFailoverToTheMirror: the primary stops; the next tick applies the
// next publication from the mirror, and reports there.
func TestFailoverToTheMirror(t *testing.T) {
	e := e2e.Start(t, oneHostFleet())
	h := e.Host(t, "alpha")
	v1 := e.Publish(t)["alpha"]
	m := startMirror(t, e, "alpha")
	push(t, e, m)
	useServers(e, h, m)

	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != v1.Built {
		t.Fatalf("first tick: exit %d, current %s", res.ExitCode, h.Current(t))
	}
	if r := h.Status(t); r.Server != e.SSHD.Addr || r.AppliedVersion != v1.Version {
		t.Errorf("the primary's report: server %q version %s, want %s %s", r.Server, r.AppliedVersion, e.SSHD.Addr, v1.Version)
	}

	e.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	e.WriteFleet(t, e.Fleet)
	v2 := e.Publish(t)["alpha"]
	push(t, e, m)
	e.SSHD.Stop()

	res := h.Run(t)
	if res.ExitCode != 0 || h.Current(t) != v2.Built {
		t.Fatalf("tick with the primary down: exit %d, current %s, want %s", res.ExitCode, h.Current(t), v2.Built)
	}
	if !strings.Contains(res.Output(), "server "+e.SSHD.Addr+" did not answer: using "+m.sshd.Addr) {
		t.Errorf("the tick did not say it failed over:\n%s", res.Output())
	}
	r := readReport(t, filepath.Join(m.sshd.Root, "alpha", manifest.StatusFile))
	if r.Server != m.sshd.Addr || r.AppliedVersion != v2.Version || r.Result != manifest.ResultSuccess {
		t.Errorf("the mirror's report: %+v", r)
	}

	// Sticky: the next tick goes to the mirror first, without a failed
	// attempt at the primary.
	res = h.Run(t)
	if res.ExitCode != 0 || strings.Contains(res.Output(), "did not answer") {
		t.Errorf("the tick after the failover tried the primary first (exit %d):\n%s", res.ExitCode, res.Output())
	}

	// The primary's status sees the host through pull-reports: the
	// mirror's report is newer than the one the primary holds.
	pulled := pull(t, e, m)
	// The report, and the log of the attempt it names.
	if len(pulled) != 1 || !pulled[0].Changed || pulled[0].Files != 2 {
		t.Errorf("pull-reports: %+v", pulled)
	}
	if rep := h.Status(t); rep.Log == "" || !strings.Contains(h.Log(t, rep.Log), v2.Version) {
		t.Errorf("the pulled report's log %q is not on the primary, or is not the attempt of %s", rep.Log, v2.Version)
	}
	snap, err := status.Collect(context.Background(), status.Options{Root: e.SSHD.Root, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	row := snap.Hosts[0]
	if row.Host != "alpha" || row.Server != m.sshd.Addr || row.AppliedVersion != v2.Version || row.State != status.UpToDate {
		t.Errorf("status on the primary after pull-reports: host %s state %s server %q applied %s, want up-to-date through %s at %s",
			row.Host, row.State, row.Server, row.AppliedVersion, m.sshd.Addr, v2.Version)
	}
	// Pulled again: nothing newer.
	if again := pull(t, e, m); again[0].Changed || again[0].Note != "the primary's report is as new" {
		t.Errorf("second pull-reports: %+v", again[0])
	}
}

// pull runs pull-reports from the mirrors into the primary, failing the
// test on any host's error.
func pull(t *testing.T, e *e2e.Env, ms ...*mirrorServer) []mirror.HostResult {
	t.Helper()
	var dests []mirror.Dest
	var known []byte
	for _, m := range ms {
		dests = append(dests, m.dest(t))
		known = append(known, m.sshd.KnownHostsLine+"\n"...)
	}
	khFile := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(khFile, known, 0o644)
	kh, err := mirror.LoadKnownHosts(khFile)
	if err != nil {
		t.Fatal(err)
	}
	res, err := mirror.PullReports(context.Background(), mirror.Options{Root: e.SSHD.Root, Signer: ms[0].pusher.Signer, KnownHosts: kh}, dests)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("pull-reports: %v", r.Err)
		}
	}
	return res
}

// The push account's key is SFTP only: no command runs as root.
func TestPusherKeyRunsNoCommand(t *testing.T) {
	m := &mirrorServer{sshd: sshdtest.Start(t, sshdtest.Options{})}
	m.pusher = m.sshd.AllowPusher(t)
	c, err := ssh.Dial("tcp", m.sshd.Addr, m.sshd.ClientConfig(m.pusher))
	if err != nil {
		t.Fatalf("the pusher cannot log in: %v", err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, _ := s.CombinedOutput("id; echo ran")
	if strings.Contains(string(out), "uid=") || strings.Contains(string(out), "ran") {
		t.Errorf("a command ran as the push account: %q", out)
	}
}
