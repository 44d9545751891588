package e2e

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// runBento runs the bento binary with the fixture's Nix settings and env.
func runBento(t *testing.T, env []string, args ...string) Result {
	t.Helper()
	cmd := exec.Command(Bento(t), args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := Result{Stdout: out.String(), Stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		res.ExitCode = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("bento %v: %v", args, err)
	}
	t.Logf("bento %s: exit %d\n%s", strings.Join(args, " "), res.ExitCode, indent(res.Output()))
	return res
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// An offline bundle: exported on the server, applied on a host that
// cannot reach the server (its configuration names a port nothing listens
// on), in fetch mode from the bundle's binary cache into a store of its
// own: the very system the server built. A modified bundle is refused
// with nothing applied; the report, carried back, is what bento status
// shows.
func TestOfflineBundle(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	serverEnv := append(os.Environ(), fixture.Env()...)
	keys := t.TempDir()
	cacheKey, pubKey := filepath.Join(keys, "cache.sec"), filepath.Join(keys, "publication.sec")
	if res := runBento(t, serverEnv, "keygen", "--name", "e2e-cache-1", "--secret-key", cacheKey); res.ExitCode != 0 {
		t.Fatal("keygen")
	}
	res := runBento(t, serverEnv, "keygen", "--publication", "--name", "e2e-pub-1", "--secret-key", pubKey)
	if res.ExitCode != 0 {
		t.Fatal("keygen --publication")
	}
	pinned := strings.TrimSpace(res.Stdout)
	if res := runBento(t, serverEnv, "deploy", "--flake", e.FleetDir, "--chroot-root", e.SSHD.Root, "--state-dir", filepath.Join(keys, "state"),
		"--cache-key", cacheKey, "--publication-key", pubKey, "--no-user-check"); res.ExitCode != 0 {
		t.Fatal("deploy")
	}
	m := e.Manifest(t, "alpha")
	if m.Signature == nil || m.Cache == nil || m.ExpectedToplevel == "" {
		t.Fatalf("the deploy did not sign, cache or build: %+v", m)
	}

	out := t.TempDir()
	if res := runBento(t, serverEnv, "export", "alpha", "--chroot-root", e.SSHD.Root, "--output", out); res.ExitCode != 0 || !strings.Contains(res.Stdout, "alpha: bundle") {
		t.Fatal("export")
	}
	bundle := filepath.Join(out, "alpha")
	if !bytes.Equal(readFile(t, filepath.Join(bundle, manifest.ManifestFile)), readFile(t, filepath.Join(e.Chroot("alpha"), manifest.ManifestFile))) {
		t.Fatal("the bundle's manifest is not the published one")
	}

	h := e.Host(t, "alpha")
	ownStore(t, h)
	h.Settings["mode"] = "fetch"
	h.Settings["publicationKey"] = pinned
	h.Settings["port"] = closedPort(t)
	apply := func(dir string, args ...string) Result {
		return runBento(t, h.Environ(), append([]string{"agent", "apply-bundle", "--config", h.ConfigFile(t), dir}, args...)...)
	}
	// Without a pinned key nothing vouches for a bundle.
	delete(h.Settings, "publicationKey")
	if res := apply(bundle); res.ExitCode != 2 || !strings.Contains(res.Output(), "apply-bundle needs services.bento.publicationKey") {
		t.Fatalf("apply-bundle with no publication key pinned: exit %d", res.ExitCode)
	}
	h.Settings["publicationKey"] = pinned
	// The host cannot reach the server: a tick over SFTP fails.
	if res := h.Run(t); res.ExitCode == 0 {
		t.Fatal("the host reached the server")
	}

	// Modified bundles, each on a copy: refused, nothing applied.
	for _, tc := range []struct {
		name   string
		modify func(dir string)
		want   string
	}{
		{"a byte of the manifest", func(dir string) {
			p := filepath.Join(dir, manifest.ManifestFile)
			data := readFile(t, p)
			data[bytes.Index(data, []byte(m.ExpectedToplevel))+len("/nix/store/")] ^= 1
			writeBack(t, p, data)
		}, "does not verify"},
		{"another host's manifest", func(dir string) {
			writeBack(t, filepath.Join(dir, manifest.ManifestFile), readFile(t, filepath.Join(e.Chroot("beta"), manifest.ManifestFile)))
		}, `is for host "beta"`},
	} {
		dir := filepath.Join(t.TempDir(), "alpha")
		if err := exec.Command("cp", "-a", bundle, dir).Run(); err != nil {
			t.Fatal(err)
		}
		tc.modify(dir)
		res := apply(dir, "--now")
		if res.ExitCode == 0 || !strings.Contains(res.Output(), tc.want) {
			t.Fatalf("%s: exit %d, want a refusal saying %q", tc.name, res.ExitCode, tc.want)
		}
		if _, err := os.Lstat(h.Profile); err == nil {
			t.Fatalf("%s: the modified bundle was applied", tc.name)
		}
	}

	res = apply(bundle, "--now")
	if res.ExitCode != 0 {
		t.Fatalf("apply-bundle: exit %d", res.ExitCode)
	}
	if h.Current(t) != m.ExpectedToplevel || h.ProfileTarget(t) != m.ExpectedToplevel {
		t.Fatalf("the host runs %s, not the system the server built, %s", h.Current(t), m.ExpectedToplevel)
	}
	if !strings.Contains(res.Output(), "substituting from the bundle's binary cache") {
		t.Error("the system did not come from the bundle's cache")
	}
	var rep manifest.Report
	if err := json.Unmarshal(readFile(t, filepath.Join(bundle, manifest.StatusFile)), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Host != "alpha" || rep.Result != manifest.ResultSuccess || rep.AppliedVersion != m.Version || rep.ActualToplevel != m.ExpectedToplevel || rep.Log == "" {
		t.Fatalf("the bundle's report: %+v", rep)
	}
	if _, err := os.Lstat(filepath.Join(e.Chroot("alpha"), manifest.StatusFile)); err == nil {
		t.Fatal("the host reported to the server it cannot reach")
	}

	// Back on the server.
	if res := runBento(t, serverEnv, "import-reports", "--chroot-root", e.SSHD.Root, bundle); res.ExitCode != 0 || !strings.Contains(res.Stdout, "alpha: imported") {
		t.Fatal("import-reports")
	}
	st := runBento(t, serverEnv, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", filepath.Join(keys, "state"), "alpha")
	var doc struct {
		Hosts []struct {
			Host           string `json:"host"`
			State          string `json:"state"`
			AppliedVersion string `json:"appliedVersion"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(st.Stdout), &doc); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	if len(doc.Hosts) != 1 || doc.Hosts[0].State != "up-to-date" || doc.Hosts[0].AppliedVersion != m.Version {
		t.Fatalf("bento status after the import: %+v", doc.Hosts)
	}
	if _, err := os.Stat(filepath.Join(e.Chroot("alpha"), manifest.LogsDir, rep.Log)); err != nil {
		t.Errorf("the log was not imported: %v", err)
	}

	// A report claiming another host is refused.
	forged := rep
	forged.Host = "beta"
	data, _ := json.Marshal(forged)
	writeBack(t, filepath.Join(bundle, manifest.StatusFile), data)
	if res := runBento(t, serverEnv, "import-reports", "--chroot-root", e.SSHD.Root, bundle); res.ExitCode != 1 || !strings.Contains(res.Output(), "beta") {
		t.Fatal("a report for another host was imported")
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeBack(t *testing.T, p string, data []byte) {
	t.Helper()
	os.Remove(p)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A build-mode host applies a bundle's tree; a bundle whose object was
// changed (the manifest intact, so its signature verifies) fails the
// fetch, names the object, and applies nothing.
func TestOfflineBundleBuildModeRefusesAChangedObject(t *testing.T) {
	key := newPublicationKey(t, "fleet-1")
	e := Start(t, hostsFleet("alpha"))
	e.PublicationKey = key
	pub := e.Publish(t)["alpha"]
	out := t.TempDir()
	serverEnv := append(os.Environ(), fixture.Env()...)
	if res := runBento(t, serverEnv, "export", "alpha", "--chroot-root", e.SSHD.Root, "--output", out); res.ExitCode != 0 {
		t.Fatal("export")
	}
	bundle := filepath.Join(out, "alpha")
	h := e.Host(t, "alpha")
	h.Settings["publicationKey"] = key.Public().String()
	h.Settings["port"] = closedPort(t)
	apply := func(dir string, args ...string) Result {
		return runBento(t, h.Environ(), append([]string{"agent", "apply-bundle", "--config", h.ConfigFile(t), dir}, args...)...)
	}

	changed := filepath.Join(t.TempDir(), "alpha")
	if err := exec.Command("cp", "-a", bundle, changed).Run(); err != nil {
		t.Fatal(err)
	}
	m := e.Manifest(t, "alpha")
	obj := filepath.Join(changed, filepath.FromSlash(m.RemotePath(m.Files[0])))
	data := readFile(t, obj)
	data[0] ^= 1
	os.Chmod(obj, 0o644)
	writeBack(t, obj, data)
	res := apply(changed)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "but the manifest says "+m.Files[0].SHA256) {
		t.Fatalf("a changed object: exit %d, want a failure naming it", res.ExitCode)
	}
	if _, err := os.Lstat(h.Profile); err == nil {
		t.Fatal("the changed bundle was applied")
	}

	if res := apply(bundle, "--now"); res.ExitCode != 0 || h.Current(t) != pub.Built {
		t.Fatalf("the genuine bundle: exit %d, running %s, want %s", res.ExitCode, h.Current(t), pub.Built)
	}
}
