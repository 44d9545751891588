package e2e_test

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
)

// bento agent watch, the binary: a publication is applied without any
// timer tick, by a child "bento agent run", and SIGTERM ends the watch
// cleanly.
func TestAgentWatchBinary(t *testing.T) {
	env := e2e.Start(t, fixture.Fleet{
		Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}},
		Files: map[string]string{"modules/a.nix": "{ a = 1; }\n"},
	})
	v1 := env.Publish(t)["alpha"]
	h := env.Host(t, "alpha")
	cmd := exec.CommandContext(context.Background(), e2e.Bento(t), "agent", "watch", "--config", h.ConfigFile(t), "--every", "1s")
	cmd.Env = h.Environ()
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 1024)
	var seen strings.Builder
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(s string) {
		t.Helper()
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended before %q:\n%s", s, seen.String())
				}
				seen.WriteString(l + "\n")
				if strings.Contains(l, s) {
					return
				}
			case <-timeout:
				t.Fatalf("no %q after 2 minutes:\n%s", s, seen.String())
			}
		}
	}

	waitFor("watch: tick finished")
	if got := h.Current(t); got != v1.Built {
		t.Fatalf("first tick: running %s, want %s\n%s", got, v1.Built, seen.String())
	}
	env.Fleet.Files["modules/a.nix"] = "{ a = 2; }\n"
	env.WriteFleet(t, env.Fleet)
	v2 := env.Publish(t)["alpha"]
	waitFor("manifest.json changed")
	waitFor("watch: tick finished")
	if got := h.Current(t); got != v2.Built {
		t.Fatalf("after the publication: running %s, want %s\n%s", got, v2.Built, seen.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		seen.WriteString(l + "\n")
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch after SIGTERM: %v (want exit 0)\n%s", err, seen.String())
	}
}
