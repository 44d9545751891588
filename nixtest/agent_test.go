package nixtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// clientWithPackage evaluates an enabled client whose package is the
// directory pkg (holding bin/bento), with the trigger and the watch on.
func clientWithPackage(t *testing.T, pkg string) clientResult {
	t.Helper()
	key := publicKey(t)
	return evalClient(t, fmt.Sprintf(`{
	  networking.hostName = "web-1";
	  services.bento = {
	    enable = true; server = "bento.example.org"; serverHostKey = %s;
	    package = { type = "derivation"; name = "bento"; outPath = %s; };
	    trigger = { enable = true; port = 51337; };
	    watch = { enable = true; every = "1min 30s"; };
	    secrets.token.restartUnits = [ "nginx.service" ];
	  };
	}`, nixString(key), nixString(pkg)))
}

// The command lines in the units are accepted by the real bento's parser,
// and the configuration file the module writes by the agent's loader.
func TestAgentCommandLine(t *testing.T) {
	needNix(t)
	bin := bentoBinary(t)
	pkg := filepath.Dir(filepath.Dir(bin))
	r := clientWithPackage(t, pkg)
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	agentArgv := splitExec(t, r.Services["bento-agent"].ServiceConfig["ExecStart"].(string))
	triggers := [][]string{splitExec(t, r.Services["bento-trigger"].ServiceConfig["ExecStart"].(string))}
	watchArgv := splitExec(t, r.Services["bento-watch"].ServiceConfig["ExecStart"].(string))
	for _, argv := range append(triggers, agentArgv, watchArgv) {
		if argv[0] != bin {
			t.Fatalf("ExecStart runs %q, want %q", argv, bin)
		}
	}

	t.Run("agent run", func(t *testing.T) {
		help, _ := runErr(t, "", bin, "agent", "--help")
		if !regexp.MustCompile(`(?m)^\s+run\b`).MatchString(help) {
			// TODO(issue 5): remove this skip once `bento agent run` exists.
			t.Skip("./cmd/bento has no `agent run` command yet (issue 5): the agent's command line is not checked")
		}
		out, err := runErr(t, "", bin, "agent", "run", "--help")
		if err != nil || !strings.Contains(out, "--config") {
			t.Fatalf("bento agent run --help: %v\n%s\n(the module runs bento agent run --config FILE)", err, out)
		}
		if out, err := runErr(t, "", agentArgv[0], append(agentArgv[1:], "--help")...); err != nil {
			t.Errorf("the unit's command line %q is refused: %v\n%s", agentArgv, err, out)
		}
		out, err = runErr(t, "", bin, "agent", "trigger-server", "--help")
		if err != nil || !strings.Contains(out, "--config") || !strings.Contains(out, "--listen") {
			t.Fatalf("bento agent trigger-server --help: %v\n%s\n(the module's bento-trigger service runs bento agent trigger-server --config FILE --listen unix:SOCKET [--listen 127.0.0.1:PORT])", err, out)
		}
		for _, argv := range triggers {
			if out, err := runErr(t, "", argv[0], append(argv[1:], "--help")...); err != nil {
				t.Errorf("the trigger unit's command line %q is refused: %v\n%s", argv, err, out)
			}
		}
		if want := []string{bin, "agent", "watch", "--config", "/etc/bento/agent.json", "--every", "1min 30s"}; !reflect.DeepEqual(watchArgv, want) {
			t.Errorf("bento-watch: ExecStart = %q, want %q", watchArgv, want)
		}
		if out, err := runErr(t, "", watchArgv[0], append(watchArgv[1:], "--help")...); err != nil {
			t.Errorf("the watch unit's command line %q is refused: %v\n%s", watchArgv, err, out)
		}
		// The span is bento's too: a value out of range is refused by the
		// command itself (exit 2) before it connects anywhere.
		cfg := agentArgv[indexOf(agentArgv, "--config")+1]
		if out, err := runErr(t, "", bin, "agent", "watch", "--config", cfg, "--every", "20min"); err == nil || !strings.Contains(err.Error(), "--every 20min is out of range") {
			t.Errorf("bento agent watch --every 20min: %v\n%s", err, out)
		}
		w := r.Services["bento-watch"]
		if w.RestartIfChanged == nil || !*w.RestartIfChanged || w.ServiceConfig["KillMode"] != "process" || w.ServiceConfig["Restart"] != "always" {
			t.Errorf("bento-watch = %+v", w)
		}
	})

	// The trigger unit's command line, run for real (with its socket in a
	// temporary directory): one server answers on both addresses, and only
	// on those (the default socket is replaced, not added to).
	t.Run("agent trigger-server", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "trigger.sock")
		port := freePort(t)
		key := publicKey(t)
		r := evalClient(t, fmt.Sprintf(`{
		  networking.hostName = "web-1";
		  services.bento = {
		    enable = true; server = "bento.example.org"; serverHostKey = %s;
		    package = { type = "derivation"; name = "bento"; outPath = %s; };
		    trigger = { enable = true; socket = %s; port = %d; };
		  };
		}`, nixString(key), nixString(pkg), nixString(sock), port))
		argv := splitExec(t, r.Services["bento-trigger"].ServiceConfig["ExecStart"].(string))
		i := indexOf(argv, "--config")
		if i < 0 || argv[i+1] != "/etc/bento/agent.json" {
			t.Fatalf("ExecStart = %q, want --config /etc/bento/agent.json", argv)
		}
		// /etc/bento/agent.json is the unit's own file on a host; here, the store file.
		args := append(append([]string{}, argv[1:]...), "--state-dir", t.TempDir())
		args[i] = agentArgv[indexOf(agentArgv, "--config")+1]
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cmd := exec.CommandContext(ctx, argv[0], args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cancel()
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		var listening []string
		timeout := time.After(time.Minute)
		for len(listening) < 2 {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("%q exited; listening on %q", append(argv[:1], args...), listening)
				}
				if a, ok := strings.CutPrefix(l, "bento: trigger server listening on "); ok {
					listening = append(listening, a)
				}
			case <-timeout:
				t.Fatalf("%q is not listening on both addresses after a minute (%q)", append(argv[:1], args...), listening)
			}
		}
		go func() {
			for range lines {
			}
		}()
		want := []string{"unix:" + sock, fmt.Sprintf("127.0.0.1:%d", port)}
		if !reflect.DeepEqual(listening, want) {
			t.Errorf("listening on %q, want %q", listening, want)
		}
		for _, a := range []struct{ network, address string }{{"unix", sock}, {"tcp", fmt.Sprintf("127.0.0.1:%d", port)}} {
			c, err := net.DialTimeout(a.network, a.address, 10*time.Second)
			if err != nil {
				t.Errorf("%s %s: %v", a.network, a.address, err)
				continue
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			fmt.Fprintf(c, "not a request\n")
			reply, _ := io.ReadAll(c)
			c.Close()
			if !strings.Contains(string(reply), "unknown request") {
				t.Errorf("%s %s answered %q, want the trigger server's refusal of a bad request", a.network, a.address, reply)
			}
		}
	})

	// bento-secrets runs `bento agent install-secrets` at boot.
	t.Run("agent install-secrets", func(t *testing.T) {
		argv := secretsArgv(t, r.Services["bento-secrets"])
		if argv[0] != bin {
			t.Fatalf("bento-secrets runs %q, want %q", argv, bin)
		}
		if out, err := runErr(t, "", argv[0], append(argv[1:], "--help")...); err != nil {
			t.Errorf("the bento-secrets unit's command line %q is refused: %v\n%s", argv, err, out)
		}
		// Nothing applied yet (a fresh state directory): it succeeds
		// without the network, for real.
		conf := argv[indexOf(argv, "--config")+1]
		state := t.TempDir()
		if out, err := runErr(t, "", argv[0], append(argv[1:], "--state-dir", state)...); err != nil {
			data, _ := os.ReadFile(conf)
			t.Errorf("%q --state-dir %s: %v\n%s\n%s", argv, state, err, out, data)
		}
	})

	t.Run("agent configuration", func(t *testing.T) {
		root := repoRoot(t)
		if _, err := os.Stat(filepath.Join(root, "agent", "config.go")); err != nil {
			t.Skip("the agent package has no config.go yet (issue 5)")
		}
		check := filepath.Join(t.TempDir(), "agentcheck")
		cmd := exec.Command("go", "build", "-o", check, "./nixtest/testdata/agentcheck")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build nixtest/testdata/agentcheck (it loads the module's JSON with agent.Config.LoadFile and Validate): %v\n%s", err, out)
		}
		conf := agentArgv[indexOf(agentArgv, "--config")+1]
		if out, err := runErr(t, "", check, conf); err != nil {
			data, _ := os.ReadFile(conf)
			t.Errorf("the agent refuses the configuration the module writes: %v\n%s\n%s", err, out, data)
		}
	})
}

// The units the module generates pass `systemd-analyze verify` (unknown
// keys, bad calendar specs, time spans and socket settings are errors).
func TestUnitsVerify(t *testing.T) {
	needNix(t)
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	pkg := t.TempDir()
	if err := os.MkdirAll(filepath.Join(pkg, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "bin", "bento"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := clientWithPackage(t, pkg)
	dir := t.TempDir()
	var files []string
	write := func(name, text string) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, path)
	}
	for name, u := range r.Services {
		write(name+".service", renderUnit(u, "Service", u.ServiceConfig))
	}
	for name, u := range r.Timers {
		write(name+".timer", renderUnit(u, "Timer", u.TimerConfig))
	}
	if len(files) != 5 {
		t.Fatalf("units: %v, want the agent's service and timer, bento-trigger, bento-watch and bento-secrets", files)
	}
	out, err := runErr(t, dir, analyze, append([]string{"verify", "--man=no"}, files...)...)
	if err != nil || regexp.MustCompile(`(?i)ignoring|unknown|failed|invalid`).MatchString(out) {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// renderUnit writes a unit file the way NixOS does for these attributes:
// lists become repeated keys, booleans true/false, path becomes PATH.
func renderUnit(u unit, section string, settings map[string]any) string {
	var b strings.Builder
	line := func(k string, v any) {
		switch v := v.(type) {
		case []any:
			for _, x := range v {
				fmt.Fprintf(&b, "%s=%v\n", k, x)
			}
		case bool:
			fmt.Fprintf(&b, "%s=%t\n", k, v)
		default:
			fmt.Fprintf(&b, "%s=%v\n", k, v)
		}
	}
	lines := func(m map[string]any) {
		for _, k := range sortedKeys(m) {
			line(k, m[k])
		}
	}
	b.WriteString("[Unit]\n")
	line("Description", u.Description)
	for _, w := range u.Wants {
		line("Wants", w)
	}
	for _, w := range u.Requires {
		line("Requires", w)
	}
	for _, w := range u.After {
		line("After", w)
	}
	for _, w := range u.Before {
		line("Before", w)
	}
	lines(u.UnitConfig)
	fmt.Fprintf(&b, "\n[%s]\n", section)
	if section == "Service" {
		var path []string
		for _, p := range u.Path {
			path = append(path, p+"/bin")
		}
		env := map[string]string{"PATH": strings.Join(path, ":")}
		for k, v := range u.Environment {
			env[k] = v
		}
		for _, k := range sortedKeys(env) {
			fmt.Fprintf(&b, "Environment=%q\n", k+"="+env[k])
		}
	}
	lines(settings)
	if len(u.WantedBy) > 0 {
		b.WriteString("\n[Install]\n")
		for _, w := range u.WantedBy {
			line("WantedBy", w)
		}
	}
	return b.String()
}

// freePort is a TCP port on 127.0.0.1 that nothing listened on a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func sortedKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
