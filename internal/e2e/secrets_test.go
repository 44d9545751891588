package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/internal/testio"

	"github.com/bento-nix/bento/internal/fixture"
)

func randomSecret(what string) string {
	b := make([]byte, 16)
	rand.Read(b)
	return "bento-e2e-secret-" + what + "-" + hex.EncodeToString(b)
}

func writeSecret(t *testing.T, e *Env, host, name, content string) {
	t.Helper()
	p := filepath.Join(e.SecretsDir, host, name)
	os.MkdirAll(filepath.Dir(p), 0o700)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func checkSecret(t *testing.T, p, content string, mode fs.FileMode, uid int) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("secret not installed: %v", err)
	}
	if string(data) != content {
		t.Errorf("%s holds the wrong content", p)
	}
	fi, _ := os.Lstat(p)
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode() != mode || int(st.Uid) != uid {
		t.Errorf("%s: %v uid %d, want %v uid %d", p, fi.Mode(), st.Uid, mode, uid)
	}
}

// The whole life of a secret through bento agent run: installed before the
// switch with its owner and mode, a failing one reported alone, a change
// restarts its unit, a reboot's empty /run is repaired by an idle tick, a
// removed secret disappears; no log, report or store path holds a secret.
func TestSecretsThroughTheAgent(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	h := e.Host(t, "alpha")
	target := filepath.Join(h.Dir, "run", "bento-secrets")
	restarts := filepath.Join(h.Dir, "restarts")
	h.Settings["restartCommand"] = []string{"/bin/sh", "-c", `echo "$0" >> "` + restarts + `"`}
	h.Settings["secrets"] = map[string]any{
		"db":  map[string]any{"path": filepath.Join(target, "db"), "owner": "nobody", "group": "nogroup", "mode": "0440", "restartUnits": []string{"postgresql.service"}},
		"api": map[string]any{"path": filepath.Join(target, "api"), "owner": "no-such-user-bento", "group": "root", "mode": "0400", "restartUnits": []string{"api.service"}},
	}
	db, api := randomSecret("db"), randomSecret("api")
	writeSecret(t, e, "alpha", "db", db)
	writeSecret(t, e, "alpha", "api", api)
	pub := e.Publish(t)

	res := h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	checkSecret(t, filepath.Join(target, "db"), db, 0o440, 65534)
	if _, err := os.Lstat(filepath.Join(target, "api")); err == nil {
		t.Error("api was installed although its owner does not exist")
	}
	st := h.Status(t)
	if st.AppliedVersion != pub["alpha"].Version || !strings.Contains(st.SecretErrors["api"], `owner "no-such-user-bento": no such user`) || len(st.SecretErrors) != 1 {
		t.Fatalf("status.json: applied %s, secretErrors %v", st.AppliedVersion, st.SecretErrors)
	}
	log := h.Log(t, st.Log)
	installed, switched := strings.Index(log, "secret installed secret=db"), strings.Index(log, "switching to")
	if installed < 0 || switched < 0 || installed > switched {
		t.Errorf("the uploaded log does not show db installed before the switch:\n%s", log)
	}
	if got := readLines(t, restarts); len(got) != 1 || got[0] != "postgresql.service" {
		t.Errorf("restarts after the first tick: %q", got)
	}

	// Only db changes: a new version, db's unit restarted, no rebuild needed.
	db2 := randomSecret("db2")
	writeSecret(t, e, "alpha", "db", db2)
	pub2 := e.Publish(t)
	if pub2["alpha"].Version == pub["alpha"].Version {
		t.Fatal("a changed secret did not make a new version")
	}
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick after the change: exit %d", res.ExitCode)
	}
	checkSecret(t, filepath.Join(target, "db"), db2, 0o440, 65534)
	if got := readLines(t, restarts); len(got) != 2 || got[1] != "postgresql.service" {
		t.Errorf("restarts after db changed: %q", got)
	}

	// A reboot empties /run: the next idle tick puts db back.
	os.RemoveAll(target)
	res = h.Run(t)
	if res.ExitCode != 0 || !strings.Contains(res.Output(), "up to date") {
		t.Fatalf("idle tick: exit %d", res.ExitCode)
	}
	checkSecret(t, filepath.Join(target, "db"), db2, 0o440, 65534)

	// db is removed on the server (and from the host's options).
	os.Remove(filepath.Join(e.SecretsDir, "alpha", "db"))
	delete(h.Settings["secrets"].(map[string]any), "db")
	e.Publish(t)
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick after the removal: exit %d", res.ExitCode)
	}
	if _, err := os.Lstat(filepath.Join(target, "db")); err == nil {
		t.Error("db is still installed after its removal")
	}
	if st := h.Status(t); len(st.SecretErrors) != 1 || st.SecretErrors["api"] == "" {
		t.Errorf("secretErrors after the removal: %v", st.SecretErrors)
	}

	// Nothing the host uploaded or printed holds a secret, nor the store.
	var all bytes.Buffer
	all.WriteString(res.Output())
	for _, name := range h.Logs(t) {
		all.WriteString(h.Log(t, name))
	}
	data, _ := os.ReadFile(filepath.Join(e.Chroot("alpha"), "reports", "status.json"))
	all.Write(data)
	for _, s := range []string{db, db2, api} {
		if strings.Contains(all.String(), s) {
			t.Error("a secret's content is in a log or report")
		}
	}
	if !strings.Contains(all.String(), "secret installed") {
		t.Fatal("control failed: the logs searched do not hold the agent's secret lines")
	}
	for _, p := range testio.GrepStore("/nix/store", db, db2, api) {
		t.Errorf("a secret is in %s", p)
	}

}

// installSecrets runs "bento agent install-secrets" for the host.
func installSecrets(t *testing.T, h *Host, args ...string) Result {
	t.Helper()
	cmd := exec.Command(Bento(t), append([]string{"agent", "install-secrets", "--config", h.ConfigFile(t)}, args...)...)
	cmd.Env = h.Environ()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		res.ExitCode = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	t.Logf("bento agent install-secrets %v exit %d:\n%s", args, res.ExitCode, indent(res.Output()))
	return res
}

// After a reboot /run is empty until the next tick; install-secrets puts
// the applied version's secrets back from the agent's copies with the
// server out of reach, restarting units only when asked to.
func TestInstallSecretsAtBoot(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	h := e.Host(t, "alpha")
	target := filepath.Join(h.Dir, "run", "bento-secrets")
	restarts := filepath.Join(h.Dir, "restarts")
	h.Settings["restartCommand"] = []string{"/bin/sh", "-c", `echo "$0" >> "` + restarts + `"`}
	h.Settings["secrets"] = map[string]any{
		"db": map[string]any{"path": filepath.Join(target, "db"), "owner": "nobody", "group": "nogroup", "mode": "0440", "restartUnits": []string{"postgresql.service"}},
	}
	db := randomSecret("db")
	writeSecret(t, e, "alpha", "db", db)

	// Nothing applied yet: nothing to do, and no state directory is made.
	if res := installSecrets(t, h); res.ExitCode != 0 || !strings.Contains(res.Output(), "nothing applied yet") {
		t.Fatalf("before the first tick: exit %d", res.ExitCode)
	}
	if _, err := os.Stat(h.StateDir); err == nil {
		t.Error("install-secrets made the state directory of a host that never ran")
	}

	e.Publish(t)
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	checkSecret(t, filepath.Join(target, "db"), db, 0o440, 65534)
	if got := readLines(t, restarts); len(got) != 1 {
		t.Fatalf("restarts after the tick: %q", got)
	}

	// The server is out of reach (nothing listens on port 1).
	h.Settings["port"] = 1
	os.RemoveAll(target)
	res := installSecrets(t, h, "--no-restart")
	if res.ExitCode != 0 {
		t.Fatalf("install-secrets --no-restart: exit %d", res.ExitCode)
	}
	checkSecret(t, filepath.Join(target, "db"), db, 0o440, 65534)
	if got := readLines(t, restarts); len(got) != 1 {
		t.Errorf("--no-restart restarted units: %q", got)
	}
	// In place already: nothing written, nothing restarted.
	if res := installSecrets(t, h); res.ExitCode != 0 || !strings.Contains(res.Output(), "0 written") {
		t.Errorf("second install-secrets: exit %d", res.ExitCode)
	}
	if got := readLines(t, restarts); len(got) != 1 {
		t.Errorf("an unchanged secret restarted units: %q", got)
	}
	os.Remove(filepath.Join(target, "db"))
	if res := installSecrets(t, h); res.ExitCode != 0 {
		t.Fatalf("install-secrets: exit %d", res.ExitCode)
	}
	checkSecret(t, filepath.Join(target, "db"), db, 0o440, 65534)
	if got := readLines(t, restarts); len(got) != 2 || got[1] != "postgresql.service" {
		t.Errorf("restarts after a repair: %q", got)
	}

	// An owner that no longer exists fails that secret: exit 1, named,
	// never its content.
	h.Settings["secrets"].(map[string]any)["db"].(map[string]any)["owner"] = "no-such-user-bento"
	os.Remove(filepath.Join(target, "db"))
	res = installSecrets(t, h)
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "secret db") || !strings.Contains(res.Output(), "no-such-user-bento") {
		t.Errorf("a failing secret: exit %d", res.ExitCode)
	}
	if strings.Contains(res.Output(), db) {
		t.Error("install-secrets printed a secret's content")
	}
}

// A tick that applies nothing still puts the running system's secrets
// back from the held copies: when the server is out of reach, and when
// the newest version failed and waits for its retry.
func TestSecretsRepairedOnTicksThatApplyNothing(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	h := e.Host(t, "alpha")
	target := filepath.Join(h.Dir, "run", "bento-secrets", "db")
	h.Settings["restartCommand"] = []string{"/bin/true"}
	h.Settings["secrets"] = map[string]any{"db": map[string]any{"path": target, "owner": "nobody", "mode": "0400"}}
	db := randomSecret("db")
	writeSecret(t, e, "alpha", "db", db)
	e.Publish(t)
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	checkSecret(t, target, db, 0o400, 65534)

	// The newest version fails activation: rolled back, then waiting.
	e.Update(t, "alpha", func(x *fixture.Host) { x.FailSwitch = true })
	e.Publish(t)
	if res := h.Run(t); res.ExitCode == 0 {
		t.Fatal("a failing switch exited 0")
	}
	os.Remove(target)
	res := h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "next retry after") {
		t.Fatalf("expected a tick waiting for the retry: exit %d", res.ExitCode)
	}
	checkSecret(t, target, db, 0o400, 65534)

	// The server is out of reach (nothing listens on port 1).
	h.Settings["port"] = 1
	os.Remove(target)
	if res := h.Run(t); res.ExitCode == 0 {
		t.Fatal("a tick without the server exited 0")
	}
	checkSecret(t, target, db, 0o400, 65534)
}

// An attempt that installs a new version's secrets before the switch and
// then cannot switch at all (nothing changed, nothing to roll back) puts
// the running version's secrets back.
func TestSecretsRestoredWhenTheSwitchChangesNothing(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	e.SecretsDir = filepath.Join(t.TempDir(), "secrets")
	h := e.Host(t, "alpha")
	target := filepath.Join(h.Dir, "run", "bento-secrets", "db")
	h.Settings["restartCommand"] = []string{"/bin/true"}
	h.Settings["secrets"] = map[string]any{"db": map[string]any{"path": target, "owner": "nobody", "mode": "0400"}}
	db := randomSecret("db")
	writeSecret(t, e, "alpha", "db", db)
	e.Publish(t)
	if res := h.Run(t); res.ExitCode != 0 {
		t.Fatalf("tick: exit %d", res.ExitCode)
	}
	checkSecret(t, target, db, 0o400, 65534)

	// nix-env cannot set a profile under a regular file: the switch fails
	// before anything changed.
	blocker := filepath.Join(h.Dir, "not-a-directory")
	os.WriteFile(blocker, nil, 0o644)
	h.Settings["profile"] = filepath.Join(blocker, "system")
	writeSecret(t, e, "alpha", "db", randomSecret("db2"))
	e.Publish(t)
	res := h.Run(t)
	if res.ExitCode == 0 || !strings.Contains(res.Output(), "nothing was changed") {
		t.Fatalf("expected a switch that changed nothing: exit %d", res.ExitCode)
	}
	if !strings.Contains(res.Output(), "secret installed secret=db") {
		t.Fatal("control failed: the new secret was not installed before the switch")
	}
	checkSecret(t, target, db, 0o400, 65534)
}
