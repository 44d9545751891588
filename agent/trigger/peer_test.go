package trigger

import (
	"context"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// A local user who is neither root nor in an allowed group connects to the
// loopback port as a real process of its own: the tick does not run, and
// the one line it gets names the option that would let it in.
func TestUnprivilegedUserIsRefusedOverTCP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash (for /dev/tcp) not installed")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	var ticks atomic.Int32
	tick := func(ctx context.Context, out io.Writer) error {
		ticks.Add(1)
		io.WriteString(out, "secret tick output\n")
		return nil
	}
	cases := []struct {
		name   string
		groups []string
		refuse bool
	}{
		{name: "not in an allowed group", groups: []string{"wheel"}, refuse: true},
		{name: "member of an allowed group", groups: []string{nobody.Gid}, refuse: false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ticks.Store(0)
			groups := c.groups
			if !c.refuse {
				g, err := user.LookupGroupId(nobody.Gid)
				if err != nil {
					t.Skipf("nobody's group: %v", err)
				}
				groups = []string{g.Name}
			}
			a := serveWith(t, &Server{Tick: tick, AllowedGroups: func() []string { return groups }}, "127.0.0.1:0")[0]
			host, port, _ := strings.Cut(a.Address, ":")
			cmd := exec.Command(bash, "-c", `exec 3<>/dev/tcp/`+host+`/`+port+`; printf 'tick\n' >&3; cat <&3`)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
			cmd.Dir = "/"
			out, _ := cmd.CombinedOutput()
			got := string(out)
			if c.refuse {
				if ticks.Load() != 0 || strings.Contains(got, "secret tick output") {
					t.Fatalf("a tick ran for nobody (%d ticks), output %q", ticks.Load(), got)
				}
				if !strings.Contains(got, "allowedGroups") {
					t.Errorf("refusal %q does not name services.bento.trigger.allowedGroups", got)
				}
				return
			}
			if ticks.Load() != 1 || !strings.Contains(got, "secret tick output") {
				t.Errorf("member of an allowed group: %d ticks, output %q", ticks.Load(), got)
			}
		})
	}
}
