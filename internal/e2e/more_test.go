package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

// selfUpdateFlake replaces the fixture's flake.nix with one whose hosts
// take their generation from a flake input (a local path flake), so that
// "nix flake update" changes the system.
func selfUpdateFlake(t *testing.T, e *Env, pins string) {
	t.Helper()
	flake := `{
  inputs.pins.url = "path:` + pins + `";
  outputs = { self, pins }:
    let
      mkHost = import ./lib/mkhost.nix;
      names = builtins.attrNames (builtins.readDir ./hosts);
    in {
      nixosConfigurations = builtins.listToAttrs (map (n: {
        name = n;
        value = mkHost ((import (./hosts + "/${n}")) // { generation = pins.generation; });
      }) names);
    };
}
`
	if err := os.WriteFile(filepath.Join(e.FleetDir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writePins(t *testing.T, dir, generation string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	src := `{ outputs = { self }: { generation = "` + generation + `"; }; }` + "\n"
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSelfUpdateFollowsInputsBetweenPublications(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	pins := filepath.Join(t.TempDir(), "pins")
	writePins(t, pins, "1")
	selfUpdateFlake(t, e, pins)
	v1 := e.Publish(t)["alpha"]
	if !strings.HasSuffix(v1.Built, "-nixos-system-alpha-1") {
		t.Fatalf("server built %s", v1.Built)
	}
	h := e.Host(t, "alpha")
	h.Settings["selfUpdate"] = true
	if res := h.Run(t); res.ExitCode != 0 || h.Current(t) != v1.Built {
		t.Fatalf("first tick: exit %d, current %s", res.ExitCode, h.Current(t))
	}
	published := e.Manifest(t, "alpha")

	// The input moves on; nothing is published.
	writePins(t, pins, "2")
	res := h.Run(t)
	if res.ExitCode != 0 {
		t.Fatalf("self-update tick: exit %d", res.ExitCode)
	}
	now := h.Current(t)
	if now == v1.Built || !strings.HasSuffix(now, "-nixos-system-alpha-2") || h.ProfileTarget(t) != now {
		t.Fatalf("self-update: current %s, profile %s; want the system of the updated input", now, h.ProfileTarget(t))
	}
	st := h.Status(t)
	if st.Result != manifest.ResultAutoUpdated || st.AppliedVersion != v1.Version || st.ActualToplevel != now || st.Stage != manifest.StageConfirmed {
		t.Errorf("status after self-update: %+v", st)
	}
	if log := h.Log(t, st.Log); !strings.Contains(log, "self-update: updating the flake inputs") {
		t.Errorf("self-update log:\n%s", log)
	}
	// The published tree is never modified (its flake.lock stays).
	if got := e.Manifest(t, "alpha"); got.Version != published.Version {
		t.Error("the publication changed")
	}
	lock, _ := os.ReadFile(filepath.Join(h.StateDir, "config", v1.Version, "flake.lock"))
	orig, _ := os.ReadFile(e.PublishedFile(t, "alpha", "flake.lock"))
	if len(orig) == 0 || string(lock) != string(orig) {
		t.Error("the local copy of the published tree was modified by the update")
	}

	// Nothing new upstream: nothing switches, the host stays auto-updated.
	res = h.Run(t)
	if res.ExitCode != 0 || !strings.Contains(res.Output(), "nothing to do") {
		t.Errorf("second self-update tick: exit %d", res.ExitCode)
	}
	if got := h.Switches(t); len(got) != 2 {
		t.Errorf("switches %q, want 2", got)
	}
	if st := h.Status(t); st.Result != manifest.ResultAutoUpdated {
		t.Errorf("an idle tick lost the auto-updated result: %s", st.Result)
	}
}

func TestTriggerRunsATickAndStreamsIt(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	pub := e.Publish(t)["alpha"]
	h := e.Host(t, "alpha")
	sock := filepath.Join(h.Dir, "trigger.sock")
	// Both at once, as the module offers: the unix socket and a loopback port.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().String()
	l.Close()
	server := exec.Command(Bento(t), "agent", "trigger-server", "--config", h.ConfigFile(t), "--listen", "unix:"+sock, "--listen", port)
	server.Env = h.Environ()
	var serverOut strings.Builder
	server.Stdout, server.Stderr = &serverOut, &serverOut
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- server.Wait() }()
	defer func() {
		server.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("trigger-server did not stop cleanly on SIGTERM: %v\n%s", err, serverOut.String())
			}
		case <-time.After(30 * time.Second):
			server.Process.Kill()
			t.Error("trigger-server ignored SIGTERM")
		}
	}()
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(sock); err == nil {
			if c, err := net.Dial("tcp", port); err == nil {
				c.Close()
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	trigger := func(addr string) Result {
		cmd := exec.Command(Bento(t), "agent", "trigger", "--address", addr)
		out, err := cmd.CombinedOutput()
		res := Result{Stdout: string(out)}
		if ee, ok := err.(*exec.ExitError); ok {
			res.ExitCode = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("bento agent trigger: exit %d\n%s", res.ExitCode, indent(res.Stdout))
		return res
	}
	res := trigger("unix:" + sock)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "applying version "+pub.Version) || !strings.Contains(res.Stdout, "switch-to-configuration switch for alpha") {
		t.Errorf("triggered tick: exit %d; its output must be streamed", res.ExitCode)
	}
	if h.Current(t) != pub.Built {
		t.Errorf("the triggered tick did not switch")
	}
	e.Update(t, "alpha", func(x *fixture.Host) { x.Generation, x.FailBuild = "2", true })
	e.Publish(t)
	res = trigger(port)
	if res.ExitCode != 1 || !strings.Contains(res.Stdout, "build of alpha fails on purpose") {
		t.Errorf("a failing triggered tick: exit %d, want 1 with the build log", res.ExitCode)
	}
}

func TestOneTickAtATime(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	pub := e.Publish(t)["alpha"]
	h := e.Host(t, "alpha")
	os.MkdirAll(h.StateDir, 0o755)
	f, err := os.OpenFile(filepath.Join(h.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	f.WriteString("4242\n")

	res := h.Run(t, "--lock-wait", "300ms")
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "another tick holds") || !strings.Contains(res.Output(), "pid 4242") {
		t.Errorf("with the lock held: exit %d", res.ExitCode)
	}
	// 0 means what it means for bento deploy: do not wait.
	res = h.Run(t, "--lock-wait", "0")
	if res.ExitCode != 1 || !strings.Contains(res.Output(), "another tick holds") {
		t.Errorf("--lock-wait 0 with the lock held: exit %d, want 1 at once", res.ExitCode)
	}
	run := h.Start(t)
	run.WaitFor(t, "another tick is running")
	if h.Current(t) != "" {
		t.Fatal("a tick ran while another held the lock")
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if res := run.Wait(t); res.ExitCode != 0 || h.Current(t) != pub.Built {
		t.Errorf("the waiting tick: exit %d, current %s", res.ExitCode, h.Current(t))
	}
}

func TestClassicLayout(t *testing.T) {
	f := hostsFleet("alpha")
	f.Classic = true
	e := Start(t, f)
	pub := e.Publish(t)["alpha"]
	if m := e.Manifest(t, "alpha"); m.Flake.Layout != "classic" {
		t.Fatalf("published layout %q", m.Flake.Layout)
	}
	h := e.Host(t, "alpha")
	h.Env = append(h.Env, "NIX_PATH="+fixture.ClassicNixPath(e.FleetDir))
	res := h.Run(t)
	if res.ExitCode != 0 || h.Current(t) != pub.Built {
		t.Fatalf("classic host: exit %d, current %s, want %s", res.ExitCode, h.Current(t), pub.Built)
	}
	if st := h.Status(t); st.Reproducible == nil || !*st.Reproducible {
		t.Errorf("classic build differs from the server's: %+v", st)
	}
}
