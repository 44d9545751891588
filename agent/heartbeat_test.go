package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/agent"
	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
	"github.com/bento-nix/bento/status"
)

// An idle tick whose report says what the server already holds only moves
// status.json's mtime; bento status still sees the host at that tick, and
// a report that changed is uploaded whole.
func TestHeartbeatTouchesAnUnchangedReport(t *testing.T) {
	f := fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}}}
	env := e2e.Start(t, f)
	env.Publish(t)
	h := env.Host(t, "alpha")
	for _, kv := range h.Environ()[len(os.Environ()):] {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := agent.Defaults()
	if _, err := cfg.LoadFile(h.ConfigFile(t)); err != nil {
		t.Fatal(err)
	}
	clock := time.Now().UTC().Truncate(time.Second)
	run := func(want string) {
		t.Helper()
		var out strings.Builder
		o, err := agent.Run(context.Background(), cfg, agent.Options{Out: &out, Nix: &nix.Runner{}, AgentVersion: "test", Now: func() time.Time { return clock }})
		if err != nil || o.Action != want {
			t.Fatalf("tick: %s, %v, want %s\n%s", o.Action, err, want, out.String())
		}
	}
	statusFile := filepath.Join(env.Chroot("alpha"), manifest.StatusFile)
	inode := func() uint64 {
		t.Helper()
		fi, err := os.Stat(statusFile)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	seen := func() time.Time {
		t.Helper()
		s, err := status.Collect(context.Background(), status.Options{Root: env.SSHD.Root, Now: clock})
		if err != nil || len(s.Hosts) != 1 || s.Hosts[0].LastSeen == nil {
			t.Fatalf("status: %+v, %v", s, err)
		}
		return *s.Hosts[0].LastSeen
	}

	run(agent.ActionApplied)
	clock = clock.Add(time.Minute)
	run(agent.ActionUpToDate) // the first heartbeat differs from the apply's report: uploaded
	uploaded := inode()
	clock = clock.Add(time.Minute)
	run(agent.ActionUpToDate)
	if got := inode(); got != uploaded {
		t.Errorf("an unchanged heartbeat replaced status.json (inode %d, was %d): want a touch", got, uploaded)
	}
	if got := seen(); !got.Equal(clock) {
		t.Errorf("status sees the host at %s, want the touching tick's %s", got, clock)
	}
	if rep := h.Status(t); !rep.FinishedAt.Before(clock) {
		t.Errorf("the touched report was rewritten: finishedAt %s", rep.FinishedAt)
	}

	// Something the report says changed (another system is running): the
	// server must learn it, so the heartbeat is uploaded whole.
	if err := os.Remove(h.CurrentSystem); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), h.CurrentSystem); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(time.Minute)
	run(agent.ActionUpToDate)
	if got := inode(); got == uploaded {
		t.Error("a changed heartbeat only touched status.json: the server would not learn the new current system")
	}
	if rep := h.Status(t); !rep.FinishedAt.Equal(clock) {
		t.Errorf("uploaded report finishedAt %s, want %s", rep.FinishedAt, clock)
	}
}
