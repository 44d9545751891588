package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/publish"
	"github.com/bento-nix/bento/status"
)

// deployEnv is a fixture fleet and the directories a deploy uses.
type deployEnv struct {
	fleet, root, state string
}

func newDeployEnv(t *testing.T, hosts []fixture.Host) deployEnv {
	t.Helper()
	base := t.TempDir()
	e := deployEnv{fleet: filepath.Join(base, "fleet"), root: filepath.Join(base, "chroot"), state: filepath.Join(base, "state")}
	if err := fixture.Write(e.fleet, fixture.Fleet{Hosts: hosts, Git: true}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e deployEnv) args(extra ...string) []string {
	return append([]string{"deploy", "--flake", e.fleet, "--chroot-root", e.root, "--state-dir", e.state}, extra...)
}

func (e deployEnv) manifest(t *testing.T, host string) (*manifest.Manifest, string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.root, host, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return m, string(data)
}

type deployJSON struct {
	OK     bool `json:"ok"`
	DryRun bool `json:"dryRun"`
	Hosts  []struct {
		Host             string `json:"host"`
		Status           string `json:"state"`
		OK               bool   `json:"ok"`
		Version          string `json:"version"`
		ExpectedToplevel string `json:"expectedToplevel"`
		BuildFailed      bool   `json:"buildFailed"`
		Error            string `json:"error"`
		Build            *struct {
			Status  string `json:"state"`
			OutPath string `json:"outPath"`
		} `json:"build"`
	} `json:"hosts"`
	Orphans []publish.Orphan `json:"orphans"`
	Pruned  []string         `json:"pruned"`
	Kept    []string         `json:"kept"`
	Notes   []string         `json:"notes"`
}

func parseDeploy(t *testing.T, stdout string) deployJSON {
	t.Helper()
	var out deployJSON
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	return out
}

// testUsers are unprivileged users every Debian system has: deploy refuses
// two hosts with one user, so each host gets its own (the first nobody).
var testUsers = []string{"nobody", "daemon", "bin", "sys", "games", "man", "lp", "mail"}

func hostsOf(hosts ...string) []fixture.Host {
	var out []fixture.Host
	for i, h := range hosts {
		out = append(out, fixture.Host{Name: h, Bento: &fixture.Bento{Enable: true, User: testUsers[i]}})
	}
	return out
}

func requireRootCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("deploys as root (chroot ownership, SFTP users)")
	}
}

// The main flow: first deploy, unchanged redeploy, a host whose build
// fails keeps its previous publication, --force publishes it anyway.
func TestDeployCommand(t *testing.T) {
	requireRootCLI(t)
	hosts := append(hostsOf("alpha", "beta"), fixture.Host{Name: "lab", Bento: &fixture.Bento{Enable: false}})
	e := newDeployEnv(t, hosts)

	stdout, stderr, code := runCLI(t, e.args()...)
	if code != 0 {
		t.Fatalf("first deploy: exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, w := range []string{"alpha  published ", "beta   published ", "2 hosts in " + e.root + ": 2 published"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, stdout)
		}
	}
	if !strings.Contains(stderr, "skipping lab: disabled") {
		t.Errorf("stderr does not explain lab:\n%s", stderr)
	}
	if _, err := os.Stat(filepath.Join(e.root, "lab")); !os.IsNotExist(err) {
		t.Errorf("disabled host lab was published: %v", err)
	}
	mAlpha, _ := e.manifest(t, "alpha")
	if !strings.HasSuffix(mAlpha.ExpectedToplevel, "-nixos-system-alpha-1") {
		t.Errorf("alpha's expected system %q is not its build", mAlpha.ExpectedToplevel)
	}
	if _, err := os.Stat(mAlpha.ExpectedToplevel); err != nil {
		t.Errorf("expected system not built: %v", err)
	}

	stdout, _, code = runCLI(t, e.args()...)
	if code != 0 || !strings.Contains(stdout, "alpha  unchanged "+status.ShortVersion(mAlpha.Version)) || !strings.Contains(stdout, "2 unchanged") {
		t.Fatalf("redeploy: exit %d\n%s", code, stdout)
	}

	// beta breaks, and the shared tree changes: alpha gets the new
	// version, beta keeps the old one.
	_, betaBefore := e.manifest(t, "beta")
	hosts[1].FailBuild = true
	if err := fixture.Write(e.fleet, fixture.Fleet{Hosts: hosts, Git: true}); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = runCLI(t, e.args("--json")...)
	if code != 1 {
		t.Fatalf("deploy with a failing build: exit %d, want 1\n%s\n%s", code, stdout, stderr)
	}
	out := parseDeploy(t, stdout)
	if out.OK || len(out.Hosts) != 2 || out.Hosts[0].Status != "published" || out.Hosts[1].Status != "failed" ||
		!strings.HasPrefix(out.Hosts[1].Error, "build: ") || !out.Hosts[1].BuildFailed || out.Hosts[1].Build == nil {
		t.Fatalf("JSON: %+v", out)
	}
	if _, betaAfter := e.manifest(t, "beta"); betaAfter != betaBefore {
		t.Error("beta's publication changed although its build failed")
	}
	if !strings.Contains(stderr, "1 of 2 hosts failed and keep their previous publication: beta") {
		t.Errorf("stderr: %s", stderr)
	}

	stdout, _, code = runCLI(t, e.args("--force")...)
	if code != 1 || !strings.Contains(stdout, "published anyway (--force)") {
		t.Fatalf("--force: exit %d\n%s", code, stdout)
	}
	if m, _ := e.manifest(t, "beta"); m.ExpectedToplevel != "" || m.Version == mAlpha.Version {
		t.Errorf("forced beta: %+v", m)
	}
}

func TestDeployDryRunAndNoBuild(t *testing.T) {
	requireRootCLI(t)
	e := newDeployEnv(t, hostsOf("alpha"))
	stdout, stderr, code := runCLI(t, e.args("--dry-run", "--json")...)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	out := parseDeploy(t, stdout)
	if !out.DryRun || out.Hosts[0].Status != "published" || !strings.HasSuffix(out.Hosts[0].ExpectedToplevel, "-nixos-system-alpha-1") {
		t.Errorf("dry run: %+v", out)
	}
	if _, err := os.Stat(e.root); !os.IsNotExist(err) {
		t.Errorf("dry run created %s", e.root)
	}
	if _, err := os.Stat(out.Hosts[0].ExpectedToplevel); err == nil {
		t.Log("note: the toplevel exists already (built by another test)")
	}

	os.RemoveAll(e.state)
	stdout, _, code = runCLI(t, e.args("--no-build")...)
	if code != 0 || !strings.Contains(stdout, "alpha  published") {
		t.Fatalf("--no-build: exit %d\n%s", code, stdout)
	}
	if m, _ := e.manifest(t, "alpha"); m.ExpectedToplevel != "" {
		t.Errorf("--no-build named an expected system: %s", m.ExpectedToplevel)
	}
	if _, err := os.Stat(e.state); !os.IsNotExist(err) {
		t.Errorf("--no-build used the build state directory: %v", err)
	}
	// A build afterwards only fills in the expected system.
	stdout, _, code = runCLI(t, e.args()...)
	if code != 0 || !strings.Contains(stdout, "alpha  updated ") {
		t.Fatalf("build after --no-build: exit %d\n%s", code, stdout)
	}
	stdout, _, _ = runCLI(t, e.args("--dry-run")...)
	if !strings.Contains(stdout, "alpha  unchanged") || !strings.Contains(stdout, "(dry run: nothing written)") {
		t.Errorf("dry run of an unchanged fleet:\n%s", stdout)
	}
}

func TestDeployOrphansAndPrune(t *testing.T) {
	requireRootCLI(t)
	e := newDeployEnv(t, hostsOf("alpha", "beta", "gamma"))
	if _, _, code := runCLI(t, e.args()...); code != 0 {
		t.Fatal("first deploy failed")
	}
	if err := os.WriteFile(filepath.Join(e.root, "beta/reports/status.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	// beta and gamma leave the fleet.
	for _, h := range []string{"beta", "gamma"} {
		os.RemoveAll(filepath.Join(e.fleet, "hosts", h))
	}
	gitCommit(t, e.fleet)

	stdout, _, code := runCLI(t, e.args()...)
	if code != 0 || !strings.Contains(stdout, filepath.Join(e.root, "beta")+": no longer in the fleet (--prune removes it)") {
		t.Fatalf("exit %d\n%s", code, stdout)
	}
	if _, err := os.Stat(filepath.Join(e.root, "beta/manifest.json")); err != nil {
		t.Error("listing an orphan removed it")
	}
	stdout, _, code = runCLI(t, e.args("--prune", "--dry-run")...)
	if want := filepath.Join(e.root, "beta") + ": no longer in the fleet — would be pruned"; code != 0 || !strings.Contains(stdout, want) {
		t.Fatalf("--prune --dry-run: exit %d, want %q in\n%s", code, want, stdout)
	}
	// Deploying one host still judges orphans against the whole fleet.
	stdout, stderr, code := runCLI(t, e.args("--prune", "--json", "alpha")...)
	if code != 0 {
		t.Fatalf("--prune: exit %d\n%s\n%s", code, stdout, stderr)
	}
	out := parseDeploy(t, stdout)
	if strings.Join(out.Pruned, ",") != "beta,gamma" {
		t.Errorf("pruned %v", out.Pruned)
	}
	if got, _ := os.ReadFile(filepath.Join(e.root, "beta/reports/status.json")); string(got) != "{}" {
		t.Error("--prune removed beta's reports")
	}
	for _, gone := range []string{"beta/manifest.json", "beta/config", "gamma/config"} {
		if _, err := os.Stat(filepath.Join(e.root, gone)); !os.IsNotExist(err) {
			t.Errorf("%s survived --prune", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(e.root, "alpha/manifest.json")); err != nil {
		t.Error("alpha was pruned")
	}
	// Only the reports/ of beta and gamma are left: --prune again removes
	// nothing and says so, instead of "pruned" on every run.
	stdout, _, code = runCLI(t, e.args("--prune")...)
	if want := filepath.Join(e.root, "beta") + ": no longer in the fleet, only its reports/ are left — kept reports/ of beta; --prune-reports removes it too"; code != 0 || !strings.Contains(stdout, want) {
		t.Fatalf("second --prune: exit %d, want %q in\n%s", code, want, stdout)
	}
	if strings.Contains(stdout, "pruned") {
		t.Errorf("second --prune says pruned:\n%s", stdout)
	}
	stdout, _, code = runCLI(t, e.args("--prune", "--dry-run")...)
	if want := "only its reports/ are left — would keep reports/ of beta; --prune-reports removes it too"; code != 0 || !strings.Contains(stdout, want) {
		t.Errorf("--prune --dry-run of reports/ only: exit %d, want %q in\n%s", code, want, stdout)
	}
	stdout, _, code = runCLI(t, e.args("--prune", "--json")...)
	if out := parseDeploy(t, stdout); code != 0 || len(out.Pruned) != 0 || strings.Join(out.Kept, ",") != "beta,gamma" {
		t.Errorf("second --prune --json: exit %d, pruned %v, kept %v", code, out.Pruned, out.Kept)
	}
	stdout, _, code = runCLI(t, e.args("--prune", "--prune-reports")...)
	if code != 0 || !strings.Contains(stdout, filepath.Join(e.root, "beta")+": no longer in the fleet, only its reports/ are left — pruned\n") {
		t.Fatalf("--prune-reports: exit %d\n%s", code, stdout)
	}
	if _, err := os.Stat(filepath.Join(e.root, "beta")); !os.IsNotExist(err) {
		t.Error("--prune-reports left beta")
	}
}

func gitCommit(t *testing.T, dir string) {
	t.Helper()
	for _, args := range [][]string{{"add", "-A"}, {"commit", "-qm", "change"}} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
}

func TestDeployBadInput(t *testing.T) {
	requireRootCLI(t)
	e := newDeployEnv(t, append(hostsOf("alpha"), fixture.Host{Name: "nouser", Bento: &fixture.Bento{Enable: true, User: "bento-no-such-user"}}))
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o644)

	t.Run("locked", func(t *testing.T) {
		os.MkdirAll(e.root, 0o755)
		lock, err := publish.AcquireLock(context.Background(), e.root, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Release()
		_, stderr, code := runCLI(t, e.args()...)
		if code != 1 || !strings.Contains(stderr, "another bento deploy is running on "+e.root) || !strings.Contains(stderr, "--lock-wait") {
			t.Errorf("exit %d\n%s", code, stderr)
		}
		if strings.Contains(stderr, "building") {
			t.Error("built before failing on the lock")
		}
	})

	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"chroot root is a file", []string{"--chroot-root", file}, 2, nil, []string{"is a file, not a directory"}},
		{"unknown host", []string{"nosuchhost"}, 2, nil, []string{`host selection "nosuchhost" matches no host`}},
		{"prune-reports alone", []string{"--prune-reports"}, 2, nil, []string{"--prune-reports only adds to --prune"}},
		{"retention not a duration", []string{"--retention", "soon"}, 2, nil, []string{`--retention: "soon" is not a duration`}},
		{"retention zero", []string{"--retention", "0"}, 2, nil, []string{"--retention must be positive"}},
		{"missing SFTP user", nil, 1,
			[]string{"alpha   published", `nouser  failed: SFTP user "bento-no-such-user" does not exist on this server: add it with services.bento-server.hosts`},
			[]string{"1 of 2 hosts failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := e.args(tc.args...)
			if tc.args != nil && tc.args[0] == "--chroot-root" {
				args = append(e.args(), tc.args...)
			}
			stdout, stderr, code := runCLI(t, args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\n%s\n%s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}

	t.Run("untracked file and symlink loop", func(t *testing.T) {
		e := newDeployEnv(t, hostsOf("alpha"))
		os.WriteFile(filepath.Join(e.fleet, "forgotten.nix"), []byte("{ }"), 0o644)
		_, stderr, code := runCLI(t, e.args()...)
		if code != 0 || !strings.Contains(stderr, "untracked file(s) not published, as Nix does not see them either: forgotten.nix") {
			t.Errorf("exit %d\n%s", code, stderr)
		}
		os.Symlink("loop", filepath.Join(e.fleet, "loop"))
		gitCommit(t, e.fleet)
		_, before := e.manifest(t, "alpha")
		stdout, _, code := runCLI(t, e.args()...)
		if code != 1 || !strings.Contains(stdout, "alpha  failed: tree: symlink loop -> loop is a loop") {
			t.Errorf("exit %d\n%s", code, stdout)
		}
		if _, after := e.manifest(t, "alpha"); after != before {
			t.Error("a failed deploy changed the publication")
		}
	})
}
