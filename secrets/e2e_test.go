package secrets_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/internal/testio"

	"golang.org/x/crypto/ssh"

	"github.com/bento-nix/bento/agent/transport"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/secrets"
)

func random(t *testing.T, what string) string {
	b := make([]byte, 16)
	rand.Read(b)
	return "bento-e2e-" + what + "-" + hex.EncodeToString(b)
}

// server is the management side of the test: a fixture fleet in git with
// secrets/ ignored, evaluated and built by real Nix, published into real
// sshd chroots.
type server struct {
	t        *testing.T
	srv      *sshdtest.Server
	fleetDir string
	sdir     string
	hosts    map[string]fleet.Host
	logs     *bytes.Buffer
}

func (s *server) setSecret(host, name, content string) {
	p := filepath.Join(s.sdir, host, name)
	os.MkdirAll(filepath.Dir(p), 0o700)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

// deploy does what bento deploy does with secrets: refuse a secrets
// directory Nix would copy, evaluate and build, then publish each host's
// tree and secrets together.
func (s *server) deploy(ctx context.Context) map[string]publish.Result {
	t := s.t
	t.Helper()
	if _, err := secrets.CheckExposure(ctx, s.fleetDir, s.sdir, false, false); err != nil {
		t.Fatal(err)
	}
	r := &nix.Runner{Env: fixture.Env(), Logger: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	f, err := eval.Discover(ctx, r, eval.Options{Ref: s.fleetDir})
	if err != nil {
		t.Fatal(err)
	}
	p, err := publish.Open(ctx, publish.Options{Root: s.srv.Root, Users: true, Logger: slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var targets []publish.Target
	for _, h := range f.Hosts {
		out, err := r.Run(ctx, nix.Cmd{Host: h.Name, Args: append([]string{"build", "--no-link", "--json"}, h.Installable("config.system.build.toplevel")...), Log: s.logs})
		if err != nil {
			t.Fatal(err)
		}
		var built []struct{ Outputs map[string]string }
		if err := json.Unmarshal(out, &built); err != nil || len(built) != 1 {
			t.Fatalf("nix build --json: %s (%v)", out, err)
		}
		src, err := publish.SourceFor(h, f.Dir)
		if err != nil {
			t.Fatal(err)
		}
		files, err := secrets.Collect(s.sdir, h.Name)
		if err != nil {
			t.Fatal(err)
		}
		owner, err := secrets.LookupOwner(h.Options.User)
		if err != nil {
			t.Fatal(err)
		}
		tg := publish.Target{Host: h, Source: src, ExpectedToplevel: built[0].Outputs["out"]}
		if len(files) > 0 {
			tg.Extra = &publish.Extra{Files: files, Write: func(ctx context.Context, dir string) error {
				return secrets.Write(ctx, dir, s.sdir, h.Name, files, owner)
			}}
		}
		targets = append(targets, tg)
		s.hosts[h.Name] = h
	}
	res := map[string]publish.Result{}
	for _, r := range p.Publish(ctx, targets) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		res[r.Host] = r
	}
	return res
}

// client is one host's agent side: its SFTP login and its secrets.
type client struct {
	t      *testing.T
	c      *sshdtest.Client
	srv    *sshdtest.Server
	agent  *secrets.Agent
	logs   *bytes.Buffer
	report manifest.Report
}

// tick does with secrets what an agent tick does: fetch the manifest and
// the secrets, install them before the switch and again after it, restart
// units, report SecretErrors.
func (c *client) tick(ctx context.Context) (*manifest.Manifest, secrets.Outcome) {
	t := c.t
	t.Helper()
	conn, err := transport.Dial(ctx, transport.Options{Addr: c.srv.Addr, User: c.c.User, Signer: c.c.Signer, HostKeys: []ssh.PublicKey{c.srv.HostKey}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	data, err := conn.ReadFile(ctx, manifest.ManifestFile, manifest.MaxSize)
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.agent.Fetch(ctx, m, conn); err != nil {
		t.Fatal(err)
	}
	before, err := c.agent.Install(ctx, m.Version)
	if err != nil {
		t.Fatal(err)
	}
	// (the switch would run here)
	after, err := c.agent.Install(ctx, m.Version)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.agent.Finish(ctx, []string{m.Version}, &before, &after); err != nil {
		t.Fatal(err)
	}
	c.report = manifest.Report{Format: manifest.Format, Host: c.c.Host, SeenVersion: m.Version, SecretErrors: after.Errors}
	rep, _ := json.Marshal(c.report)
	if err := conn.WriteFile(ctx, manifest.StatusFile, rep); err != nil {
		t.Fatal(err)
	}
	before.Errors = after.Errors
	return m, before
}

func TestEndToEnd(t *testing.T) {
	sshdtest.RequireRoot(t)
	ctx := context.Background()
	srv := sshdtest.Start(t, sshdtest.Options{})
	alpha, beta := srv.AddHost(t, "alpha"), srv.AddHost(t, "beta")

	fleetDir := t.TempDir()
	marker := random(t, "tracked-file")
	err := fixture.Write(fleetDir, fixture.Fleet{
		Hosts: []fixture.Host{
			{Name: "alpha", Bento: &fixture.Bento{Enable: true, User: alpha.User, Secrets: []string{"db", "api"}}},
			{Name: "beta", Bento: &fixture.Bento{Enable: true, User: beta.User}},
		},
		Files: map[string]string{".gitignore": "/secrets/\n", "marker.txt": marker},
		Git:   true,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, srv: srv, fleetDir: fleetDir, sdir: filepath.Join(fleetDir, "secrets"), hosts: map[string]fleet.Host{}, logs: &bytes.Buffer{}}
	dbPass, apiToken, betaKey := random(t, "db"), random(t, "api"), random(t, "beta")
	s.setSecret("alpha", "db", dbPass)
	s.setSecret("alpha", "api", apiToken)
	s.setSecret("beta", "key", betaKey)

	first := s.deploy(ctx)
	v1 := first["alpha"].Version

	// Published: only alpha's SFTP user can read alpha's secrets.
	pub := filepath.Join(srv.Root, "alpha", manifest.SecretsDir, v1)
	checkMode(t, pub, fs.ModeDir|0o500, alpha.User)
	checkMode(t, filepath.Join(pub, "db"), 0o400, alpha.User)
	if out, err := readAs(t, beta.User, filepath.Join(pub, "db")); err == nil || strings.Contains(out, dbPass) {
		t.Fatalf("beta's user read alpha's secret on the server's disk: %q", out)
	}
	if out, err := readAs(t, alpha.User, filepath.Join(pub, "db")); err != nil || out != dbPass {
		t.Fatalf("alpha's user cannot read its own secret: %v", err)
	}
	// Through SFTP, beta's chroot has no way to alpha's files.
	bc := srv.SFTP(t, beta)
	for _, p := range []string{"/alpha/secrets/" + v1 + "/db", "../alpha/secrets/" + v1 + "/db", "/../alpha/secrets/" + v1 + "/db", "secrets/" + v1 + "/db"} {
		if f, err := bc.Open(p); err == nil {
			f.Close()
			t.Errorf("beta opened %s through SFTP", p)
		}
	}

	// The client installs alpha's secrets: db as nobody 0440, api with an
	// owner that does not exist on this host, which fails alone.
	target := t.TempDir()
	restarts := filepath.Join(t.TempDir(), "restarts")
	ac := &client{t: t, c: alpha, srv: srv, logs: &bytes.Buffer{}}
	ac.agent = &secrets.Agent{
		Dir: filepath.Join(t.TempDir(), "state", "secrets"),
		Specs: map[string]secrets.Spec{
			"db":  {Path: filepath.Join(target, "db"), Owner: "nobody", Group: "nogroup", Mode: "0440", RestartUnits: []string{"postgresql.service"}},
			"api": {Path: filepath.Join(target, "api"), Owner: "no-such-user-bento", RestartUnits: []string{"api.service"}},
		},
		Installer: secrets.Installer{
			Restarter: secrets.Command{"/bin/sh", "-c", `echo "$0" >> "` + restarts + `"`},
			Log:       slog.New(slog.NewTextHandler(ac.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
	}
	m, o := ac.tick(ctx)
	if len(m.Secrets) != 2 || m.Version != v1 {
		t.Fatalf("manifest secrets %+v version %s", m.Secrets, m.Version)
	}
	checkContent(t, filepath.Join(target, "db"), dbPass, 0o440, "nobody")
	if _, err := os.Lstat(filepath.Join(target, "api")); err == nil {
		t.Error("api was installed with an unknown owner")
	}
	if msg := o.Errors["api"]; !strings.Contains(msg, "no-such-user-bento") {
		t.Errorf("api's error = %q", msg)
	}
	if got := lines(restarts); !slices.Equal(got, []string{"postgresql.service"}) {
		t.Errorf("restarts after the first install = %v", got)
	}
	st := readReport(t, srv, "alpha")
	if len(st.SecretErrors) != 1 || st.SecretErrors["api"] == "" {
		t.Errorf("uploaded report's secretErrors = %v", st.SecretErrors)
	}
	checkStoreMode(t, ac.agent.Dir)

	// Nix copied the fleet into its store (the marker is there), never a secret.
	found := grepStore(t, marker, dbPass, apiToken, betaKey)
	if !found[marker] {
		t.Fatal("control failed: the fleet's tracked marker file is not in /nix/store, so the search proves nothing")
	}
	for _, sec := range []string{dbPass, apiToken, betaKey} {
		if found[sec] {
			t.Errorf("a secret is in /nix/store")
		}
	}

	// A changed secret is a new version (the flake did not change) and
	// restarts the secret's units.
	dbPass2 := random(t, "db2")
	s.setSecret("alpha", "db", dbPass2)
	second := s.deploy(ctx)
	if second["alpha"].Status != publish.StatusPublished || second["alpha"].Version == v1 {
		t.Fatalf("changing a secret published %s %s (was %s)", second["alpha"].Status, second["alpha"].Version, v1)
	}
	if second["beta"].Status != publish.StatusUnchanged {
		t.Errorf("beta was %s by alpha's secret change", second["beta"].Status)
	}
	m, o = ac.tick(ctx)
	checkContent(t, filepath.Join(target, "db"), dbPass2, 0o440, "nobody")
	if !slices.Equal(o.Changed, []string{"db"}) {
		t.Errorf("changed = %v", o.Changed)
	}
	if got := lines(restarts); !slices.Equal(got, []string{"postgresql.service", "postgresql.service"}) {
		t.Errorf("restarts after db changed = %v", got)
	}
	if ac.agent.Store().Has(v1) {
		t.Error("the client kept the old version's secrets")
	}

	// An idle tick after a reboot emptied /run puts the secret back from
	// the held copy, without the server.
	os.Remove(filepath.Join(target, "db"))
	o, err = ac.agent.Install(ctx, m.Version)
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, filepath.Join(target, "db"), dbPass2, 0o440, "nobody")
	if !slices.Equal(o.Changed, []string{"db"}) {
		t.Errorf("repair changed %v", o.Changed)
	}
	if _, err := ac.agent.Install(ctx, v1); !errors.Is(err, secrets.ErrNotHeld) {
		t.Errorf("installing a version that is not held: %v", err)
	}

	// A removed secret is removed from the host.
	os.Remove(filepath.Join(s.sdir, "alpha", "db"))
	os.Remove(filepath.Join(s.sdir, "alpha", "api"))
	third := s.deploy(ctx)
	m, o = ac.tick(ctx)
	if len(m.Secrets) != 0 {
		t.Fatalf("manifest still lists %v", m.Secrets)
	}
	if _, err := os.Lstat(filepath.Join(target, "db")); err == nil {
		t.Error("db is still installed after its removal from the server")
	}
	if !slices.Equal(o.Removed, []string{"db"}) {
		t.Errorf("removed = %v", o.Removed)
	}
	if msg := readReport(t, srv, "alpha").SecretErrors["db"]; !strings.Contains(msg, "the server publishes no such secret") {
		t.Errorf("a declared secret the server no longer publishes is reported as %q", msg)
	}
	if _, err := os.Lstat(filepath.Join(srv.Root, "alpha", manifest.SecretsDir, third["alpha"].Version)); err == nil {
		t.Error("an empty secrets version was published")
	}

	// Nothing a user or monitoring reads holds a secret: logs, manifests,
	// reports.
	var everything bytes.Buffer
	everything.Write(s.logs.Bytes())
	everything.Write(ac.logs.Bytes())
	for _, h := range []string{"alpha", "beta"} {
		for _, f := range []string{manifest.ManifestFile, manifest.StatusFile} {
			data, _ := os.ReadFile(filepath.Join(srv.Root, h, f))
			everything.Write(data)
		}
	}
	if !strings.Contains(everything.String(), "secret installed") {
		t.Fatal("control failed: the client's log is not in the haystack")
	}
	for _, sec := range []string{dbPass, dbPass2, apiToken, betaKey} {
		if strings.Contains(everything.String(), sec) {
			t.Errorf("a secret's content is in a log, manifest or report")
		}
	}
}

func uidOf(t *testing.T, name string) (int, int) {
	out, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		t.Fatalf("id -u %s: %v", name, err)
	}
	gout, err := exec.Command("id", "-g", name).Output()
	if err != nil {
		t.Fatalf("id -g %s: %v", name, err)
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	gid, _ := strconv.Atoi(strings.TrimSpace(string(gout)))
	return uid, gid
}

func checkMode(t *testing.T, p string, mode fs.FileMode, owner string) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := uidOf(t, owner)
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != mode || int(st.Uid) != uid {
		t.Errorf("%s: %v uid %d, want %v %s (%d)", p, fi.Mode(), st.Uid, mode, owner, uid)
	}
}

func checkContent(t *testing.T, p, content string, mode fs.FileMode, owner string) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("secret not installed: %v", err)
	}
	if string(data) != content {
		t.Errorf("%s has the wrong content", p)
	}
	checkMode(t, p, mode, owner)
}

// checkStoreMode makes sure the client's copies are root's alone.
func checkStoreMode(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(filepath.Dir(dir), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Error(err)
			return nil
		}
		fi, _ := d.Info()
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v: the client's secret store must be root's alone", p, fi.Mode())
		}
		return nil
	})
}

// readAs reads a file as another user, the way a process of that user on
// the server would.
func readAs(t *testing.T, user, p string) (string, error) {
	uid, gid := uidOf(t, user)
	cmd := exec.Command("/bin/cat", p)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	out, err := cmd.Output()
	return string(out), err
}

func lines(file string) []string {
	data, _ := os.ReadFile(file)
	return strings.Fields(string(data))
}

func readReport(t *testing.T, srv *sshdtest.Server, host string) manifest.Report {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(srv.Root, host, manifest.StatusFile))
	if err != nil {
		t.Fatal(err)
	}
	var r manifest.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// grepStore searches every regular file under /nix/store for each needle.
func grepStore(t *testing.T, needles ...string) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	for n := range testio.GrepStore("/nix/store", needles...) {
		found[n] = true
	}
	return found
}
