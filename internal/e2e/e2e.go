// Package e2e runs bento end to end for tests: a real sshd serving one SFTP
// chroot per host (package sshdtest), a fixture fleet published into those
// chroots the way bento deploy does (package publish, with the systems
// built by real Nix on the "server", through package deploy), and the real bento binary running
// "bento agent run" for each host, with every system path (profile,
// current and booted system, reboot command) in a temporary directory.
//
// Tests assert on what a user would see: where the profile points, what
// the fixture's switch-to-configuration recorded, what the reboot command
// recorded, and the status.json and logs the host uploaded.
package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bento-nix/bento/builder"
	"github.com/bento-nix/bento/deploy"
	"github.com/bento-nix/bento/eval"
	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/internal/sshdtest"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/publish"
)

// Env is one server with its fleet.
type Env struct {
	SSHD *sshdtest.Server
	// FleetDir holds the fixture fleet's flake.
	FleetDir string
	Fleet    fixture.Fleet
	// Nix runs nix on the server side (fixture NIX_CONFIG).
	Nix *nix.Runner
	// SecretsDir, when set, holds <host>/<name> secrets that Publish
	// publishes as bento deploy --secrets-dir does, owned by each host's
	// SFTP user.
	SecretsDir string
	// PublicationKey, when set, signs what Publish publishes (bento
	// deploy --publication-key).
	PublicationKey *manifest.SigningKey
	// NextPublicationKey is announced (--next-publication-key).
	NextPublicationKey string

	// stateDir is the server's build state (GC roots, logs, records).
	stateDir string

	mu    sync.Mutex
	hosts map[string]*Host
}

// Start runs an sshd and writes the fleet; nothing is published yet.
func Start(t testing.TB, f fixture.Fleet) *Env {
	t.Helper()
	e := &Env{
		SSHD:     sshdtest.Start(t, sshdtest.Options{}),
		FleetDir: filepath.Join(t.TempDir(), "fleet"),
		stateDir: filepath.Join(t.TempDir(), "state"),
		hosts:    map[string]*Host{},
	}
	// A classic fleet's <nixpkgs/nixos> is the stand-in it ships.
	e.Nix = &nix.Runner{Env: append(fixture.Env(), "NIX_PATH="+fixture.ClassicNixPath(e.FleetDir))}
	e.WriteFleet(t, f)
	return e
}

// WriteFleet (re)writes the fleet's files.
func (e *Env) WriteFleet(t testing.TB, f fixture.Fleet) {
	t.Helper()
	e.Fleet = f
	if err := fixture.Write(e.FleetDir, f); err != nil {
		t.Fatalf("e2e: writing the fleet: %v", err)
	}
}

// Update changes one host of the fleet and rewrites it.
func (e *Env) Update(t testing.TB, name string, change func(h *fixture.Host)) {
	t.Helper()
	for i := range e.Fleet.Hosts {
		if e.Fleet.Hosts[i].Name == name {
			change(&e.Fleet.Hosts[i])
			e.WriteFleet(t, e.Fleet)
			return
		}
	}
	t.Fatalf("e2e: no fixture host %s", name)
}

// Chroot is a host's chroot directory on the server.
func (e *Env) Chroot(host string) string { return filepath.Join(e.SSHD.Root, host) }

// Published is what a publication did for one host.
type Published struct {
	publish.Result
	// Built is the system the server built ("" when its build failed:
	// published anyway, like bento deploy --force).
	Built string
}

// Publish discovers the fleet, builds the named hosts' systems (all hosts
// when none is named) with real Nix, and publishes them into their
// chroots: package deploy's pipeline, as bento deploy --force runs it
// (without user checks, binary caches or reports/ limits). A host whose
// server build fails is published without an expected system. Secrets
// (SecretsDir) belong to each host's SFTP user once Host created it.
func (e *Env) Publish(t testing.TB, names ...string) map[string]Published {
	t.Helper()
	report, err := deploy.Run(context.Background(), deploy.Options{
		Root:         e.SSHD.Root,
		Force:        true,
		LockWait:     time.Minute,
		Build:        &builder.Options{Jobs: 2, StateDir: e.stateDir},
		Nix:          e.Nix,
		SecretsDir:   e.SecretsDir,
		SecretsOwner: e.sftpUser,
		Eval:         eval.Options{Ref: e.FleetDir},

		PublicationKey:     e.PublicationKey,
		NextPublicationKey: e.NextPublicationKey,
		Select:             names,
	})
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	res := map[string]Published{}
	for _, r := range report.Hosts {
		if r.Err != nil {
			t.Fatalf("e2e: %v", r.Err)
		}
		p := Published{Result: r.Result}
		if r.Build != nil && r.Build.OK() {
			p.Built = r.Build.OutPath
		}
		res[r.Host] = p
	}
	return res
}

// sftpUser is the account the server created for host h ("" before
// Host did).
func (e *Env) sftpUser(h fleet.Host) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c := e.hosts[h.Name]; c != nil {
		return c.SSH.User
	}
	return ""
}

// WriteManifest replaces a host's published manifest by hand (for
// scenarios no honest publisher produces, such as unsafe paths).
func (e *Env) WriteManifest(t testing.TB, host string, m any) {
	t.Helper()
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.Chroot(host), manifest.ManifestFile)
	if err := os.WriteFile(p+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
}

// Manifest reads a host's published manifest.
// PublishedFile is where the host's chroot holds the content of the
// published file path (whatever the publication format).
func (e *Env) PublishedFile(t testing.TB, host, path string) string {
	t.Helper()
	m := e.Manifest(t, host)
	for _, f := range m.Files {
		if f.Path == path {
			return filepath.Join(e.Chroot(host), filepath.FromSlash(m.RemotePath(f)))
		}
	}
	t.Fatalf("%s is not published for %s", path, host)
	return ""
}

func (e *Env) Manifest(t testing.TB, host string) *manifest.Manifest {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.Chroot(host), manifest.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Host is one client machine, simulated in a temporary directory: its own
// SSH identity on the server, its state directory, system profile,
// current-system and booted-system links, and a reboot command that
// records instead of rebooting.
type Host struct {
	Name string
	SSH  *sshdtest.Client
	env  *Env

	Dir           string
	StateDir      string
	Profile       string
	CurrentSystem string
	BootedSystem  string
	// SwitchRecord collects the fixture switch-to-configuration's lines
	// ("<toplevel> <op>"); RebootRecord one line per reboot.
	SwitchRecord string
	RebootRecord string
	// Settings are agent configuration keys written into the config
	// file on every Run (on top of the harness's).
	Settings map[string]any
	// Env is added to the agent's environment.
	Env []string
}

// Host returns the client named name, creating its user on the server
// and its directories on first use.
func (e *Env) Host(t testing.TB, name string) *Host {
	t.Helper()
	e.mu.Lock()
	h, ok := e.hosts[name]
	e.mu.Unlock()
	if ok {
		return h
	}
	dir := t.TempDir()
	h = &Host{
		Name:          name,
		SSH:           e.SSHD.AddHost(t, name),
		env:           e,
		Dir:           dir,
		StateDir:      filepath.Join(dir, "state"),
		Profile:       filepath.Join(dir, "profiles", "system"),
		CurrentSystem: filepath.Join(dir, "run", "current-system"),
		BootedSystem:  filepath.Join(dir, "run", "booted-system"),
		SwitchRecord:  filepath.Join(dir, "switches"),
		RebootRecord:  filepath.Join(dir, "reboots"),
		Settings:      map[string]any{},
	}
	os.MkdirAll(filepath.Join(dir, "run"), 0o755)
	e.mu.Lock()
	e.hosts[name] = h
	e.mu.Unlock()
	return h
}

// Config is the agent configuration the harness writes for the host, in
// the NixOS module's JSON format.
func (h *Host) Config() map[string]any {
	c := map[string]any{
		"host":           h.Name,
		"server":         "127.0.0.1",
		"port":           h.env.SSHD.Port,
		"user":           h.SSH.User,
		"identityFile":   h.SSH.KeyFile,
		"serverHostKey":  h.env.SSHD.KnownHostsLine,
		"stateDir":       h.StateDir,
		"mode":           "build",
		"operation":      "switch",
		"confirmTimeout": "10s",
		"reboot":         map[string]any{"policy": "never"},
		"retry":          map[string]any{"initialDelay": "1h", "maxDelay": "6h"},
		"profile":        h.Profile,
		"currentSystem":  h.CurrentSystem,
		"bootedSystem":   h.BootedSystem,
		"rebootCommand":  []string{"/bin/sh", "-c", "echo reboot >> " + h.RebootRecord},
		// Fail fast when the server is meant to be down.
		"connectAttempts": 2,
		"connectTimeout":  "10s",
	}
	for k, v := range h.Settings {
		c[k] = v
	}
	return c
}

// Result is one run of the bento binary.
type Result struct {
	ExitCode int
	Stdout   string
	Stderr   string
}

// Output is stdout and stderr together, for messages.
func (r Result) Output() string { return r.Stdout + r.Stderr }

// ConfigFile writes the host's configuration and returns its path.
func (h *Host) ConfigFile(t testing.TB) string {
	t.Helper()
	data, err := json.MarshalIndent(h.Config(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(h.Dir, "agent.json")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Environ is the environment the agent runs with.
func (h *Host) Environ() []string {
	env := append(os.Environ(), fixture.Env()...)
	env = append(env,
		"BENTO_FIXTURE_RECORD="+h.SwitchRecord,
		"BENTO_FIXTURE_CURRENT_SYSTEM="+h.CurrentSystem,
	)
	return append(env, h.Env...)
}

// Command prepares "bento agent run --config FILE args…" for the host.
func (h *Host) Command(t testing.TB, ctx context.Context, args ...string) *exec.Cmd {
	t.Helper()
	full := append([]string{"agent", "run", "--config", h.ConfigFile(t)}, args...)
	cmd := exec.CommandContext(ctx, Bento(t), full...)
	cmd.Env = h.Environ()
	return cmd
}

// Run runs one tick of the host's agent and waits for it.
func (h *Host) Run(t testing.TB, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := h.Command(t, ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("e2e: running bento agent run: %v", err)
		}
		res.ExitCode = ee.ExitCode()
	}
	t.Logf("bento agent run (%s) exit %d:\n%s", h.Name, res.ExitCode, indent(res.Output()))
	return res
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// Status reads the status.json the host uploaded (nil when there is none).
func (h *Host) Status(t testing.TB) *manifest.Report {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(h.env.Chroot(h.Name), manifest.StatusFile))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var r manifest.Report
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("e2e: %s uploaded an invalid status.json: %v\n%s", h.Name, err, data)
	}
	return &r
}

// Log reads a log the host uploaded, decompressed.
func (h *Host) Log(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(h.env.Chroot(h.Name), manifest.LogsDir, name))
	if err != nil {
		t.Fatalf("e2e: log %s of %s: %v", name, h.Name, err)
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		data, err = io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
	}
	return string(data)
}

// Logs lists the host's uploaded logs.
func (h *Host) Logs(t testing.TB) []string {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(h.env.Chroot(h.Name), manifest.LogsDir))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}

// Switches returns what switch-to-configuration recorded, one
// "<toplevel> <op>" per call.
func (h *Host) Switches(t testing.TB) []string { return readLines(t, h.SwitchRecord) }

// Reboots returns one line per run of the reboot command.
func (h *Host) Reboots(t testing.TB) []string { return readLines(t, h.RebootRecord) }

func readLines(t testing.TB, p string) []string {
	t.Helper()
	data, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(data), "\n"), "\n")
}

// ProfileTarget is the store path the system profile points at ("" if none).
func (h *Host) ProfileTarget(t testing.TB) string { return resolve(t, h.Profile) }

// Current is the store path current-system points at ("" if none).
func (h *Host) Current(t testing.TB) string { return resolve(t, h.CurrentSystem) }

// Boot makes booted-system point at the current system, as a reboot would.
func (h *Host) Boot(t testing.TB) {
	t.Helper()
	cur := h.Current(t)
	if cur == "" {
		t.Fatal("e2e: nothing to boot: no current system")
	}
	os.Remove(h.BootedSystem)
	if err := os.Symlink(cur, h.BootedSystem); err != nil {
		t.Fatal(err)
	}
}

func resolve(t testing.TB, link string) string {
	t.Helper()
	p, err := filepath.EvalSymlinks(link)
	if os.IsNotExist(err) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	bentoOnce sync.Once
	bentoPath string
	bentoErr  error
)

// Bento returns the path of a bento binary built from this checkout, once
// per test binary.
func Bento(t testing.TB) string {
	t.Helper()
	bentoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bento-e2e-bin-")
		if err != nil {
			bentoErr = err
			return
		}
		bentoPath = filepath.Join(dir, "bento")
		root, err := moduleRoot()
		if err != nil {
			bentoErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", bentoPath, "./cmd/bento")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			bentoErr = fmt.Errorf("go build ./cmd/bento: %v\n%s", err, out)
		}
	})
	if bentoErr != nil {
		t.Fatalf("e2e: %v", bentoErr)
	}
	return bentoPath
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the bento module")
	}
	return filepath.Dir(mod), nil
}

// RemoveBinary deletes the bento binary Bento built (call it from TestMain).
func RemoveBinary() {
	if bentoPath != "" {
		os.RemoveAll(filepath.Dir(bentoPath))
	}
}

// Running is an agent tick started in the background whose output can be
// watched line by line.
type Running struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	out   strings.Builder
	lines chan string
	done  chan struct{}
	res   Result
}

// Start starts a tick without waiting for it.
func (h *Host) Start(t testing.TB, args ...string) *Running {
	t.Helper()
	cmd := h.Command(t, context.Background(), args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	r := &Running{cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("e2e: starting bento agent run: %v", err)
	}
	go func() {
		defer close(r.lines)
		buf := make([]byte, 0, 4096)
		b := make([]byte, 4096)
		for {
			n, err := pr.Read(b)
			buf = append(buf, b[:n]...)
			for {
				i := bytes.IndexByte(buf, '\n')
				if i < 0 {
					break
				}
				line := string(buf[:i])
				buf = buf[i+1:]
				r.mu.Lock()
				r.out.WriteString(line + "\n")
				r.mu.Unlock()
				select {
				case r.lines <- line:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		r.res.ExitCode = 0
		if ee, ok := err.(*exec.ExitError); ok {
			r.res.ExitCode = ee.ExitCode()
		}
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// WaitFor blocks until the tick prints a line containing s, failing the
// test when it ends first.
func (r *Running) WaitFor(t testing.TB, s string) string {
	t.Helper()
	timeout := time.After(3 * time.Minute)
	for {
		select {
		case line, ok := <-r.lines:
			if !ok {
				t.Fatalf("e2e: the tick ended without printing %q:\n%s", s, indent(r.Output()))
			}
			if strings.Contains(line, s) {
				return line
			}
		case <-timeout:
			t.Fatalf("e2e: no line with %q after 3 minutes:\n%s", s, indent(r.Output()))
		}
	}
}

// Output is everything printed so far.
func (r *Running) Output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}

// Kill sends SIGKILL and waits for the process to end.
func (r *Running) Kill(t testing.TB) {
	t.Helper()
	r.cmd.Process.Kill()
	<-r.done
}

// Wait waits for the tick to end.
func (r *Running) Wait(t testing.TB) Result {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(5 * time.Minute):
		t.Fatalf("e2e: the tick did not end:\n%s", indent(r.Output()))
	}
	for range r.lines {
	}
	r.res.Stdout = r.Output()
	t.Logf("bento agent run exit %d:\n%s", r.res.ExitCode, indent(r.res.Stdout))
	return r.res
}
