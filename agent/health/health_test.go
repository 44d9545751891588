package health

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// unitStandIn is a systemctl is-active stand-in: units listed in the file
// active are active, every other one is not (exit 3, as systemctl).
func unitStandIn(t *testing.T, active ...string) []string {
	t.Helper()
	dir := t.TempDir()
	list := filepath.Join(dir, "active")
	if err := os.WriteFile(list, []byte(strings.Join(active, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "is-active")
	body := "#!/bin/sh\nif grep -qx \"$1\" " + list + "; then echo active; exit 0; fi\necho failed; exit 3\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{script}
}

func TestKinds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("fine"))
		case "/down":
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("backend gone"))
		case "/created":
			w.WriteHeader(http.StatusCreated)
		case "/here":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/away":
			http.Redirect(w, r, "http://elsewhere.invalid/ok", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		}
	}))
	defer srv.Close()
	sec := time.Second
	r := &Runner{UnitCommand: unitStandIn(t, "nginx.service")}
	for _, tc := range []struct {
		name   string
		check  Check
		ok     bool
		output string
	}{
		{"unit active", Check{Unit: "nginx.service"}, true, "active"},
		{"unit inactive", Check{Unit: "postgresql.service"}, false, "exited with status 3:\nfailed"},
		{"command exits 0", Check{Command: []string{"sh", "-c", "echo all good"}}, true, "all good"},
		{"command exits 1", Check{Command: []string{"sh", "-c", "echo broken >&2; exit 1"}}, false, "sh -c \"echo broken >&2; exit 1\" exited with status 1:\nbroken"},
		{"command missing", Check{Command: []string{"/nonexistent/check"}}, false, "/nonexistent/check: no such file or directory"},
		{"http 200", Check{HTTP: &HTTP{URL: srv.URL + "/ok", ExpectStatus: 200}}, true, "HTTP 200 OK\nfine"},
		{"http 503", Check{HTTP: &HTTP{URL: srv.URL + "/down", ExpectStatus: 200}}, false, "answered 503, want 200:\nHTTP 503 Service Unavailable\nbackend gone"},
		{"http expected 201", Check{HTTP: &HTTP{URL: srv.URL + "/created", ExpectStatus: 201}}, true, "HTTP 201"},
		{"http same-host redirect followed", Check{HTTP: &HTTP{URL: srv.URL + "/here", ExpectStatus: 200}}, true, "fine"},
		{"http other-host redirect refused", Check{HTTP: &HTTP{URL: srv.URL + "/away", ExpectStatus: 200}}, false, "redirected to another host (elsewhere.invalid): not followed"},
		{"http redirect loop bounded", Check{HTTP: &HTTP{URL: srv.URL + "/loop", ExpectStatus: 200}}, false, "more than 3 redirects"},
		{"http nobody listening", Check{HTTP: &HTTP{URL: "http://127.0.0.1:1/", ExpectStatus: 200}}, false, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.check
			c.Name, c.Timeout = "c", 5*sec
			h := r.Run(context.Background(), "/nix/store/x", []Check{c}, true)
			got := h.Checks[0]
			if h.OK != tc.ok || got.OK != tc.ok || got.Attempts != 1 || got.Kind != c.Kind() || h.System != "/nix/store/x" {
				t.Errorf("result %+v (health ok %v), want ok %v after 1 attempt", got, h.OK, tc.ok)
			}
			if !strings.Contains(got.Output, tc.output) {
				t.Errorf("output %q, want it to contain %q", got.Output, tc.output)
			}
		})
	}
}

func TestCommandRunsAsUser(t *testing.T) {
	if syscall.Geteuid() != 0 {
		t.Skip("dropping privileges needs root")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip("no user nobody")
	}
	r := &Runner{}
	h := r.Run(context.Background(), "", []Check{
		{Name: "as-nobody", Command: []string{"sh", "-c", `id -un; echo "home=$HOME user=$USER"`}, User: "nobody", Timeout: 5 * time.Second},
		{Name: "as-root", Command: []string{"id", "-un"}, Timeout: 5 * time.Second},
		{Name: "no-such-user", Command: []string{"true"}, User: "no-such-user-here", Timeout: 5 * time.Second},
	}, false)
	nobody, _ := user.Lookup("nobody")
	want := map[string]string{"as-nobody": "nobody\nhome=" + nobody.HomeDir + " user=nobody", "as-root": "root", "no-such-user": `user "no-such-user-here"`}
	for _, c := range h.Checks {
		if !strings.Contains(c.Output, want[c.Name]) || c.OK != (c.Name != "no-such-user") {
			t.Errorf("%s: %+v, want output with %q", c.Name, c, want[c.Name])
		}
	}
	if h.OK {
		t.Error("a run with a failing check is OK")
	}
}

// counter is a command that fails until its n-th run (it counts in a file).
func counter(t *testing.T, passFrom int) ([]string, string) {
	f := filepath.Join(t.TempDir(), "count")
	script := `n=$(cat "$1" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$1"; echo "run $n"; [ $n -ge ` + strconv.Itoa(passFrom) + ` ]`
	return []string{"sh", "-c", script, "counter", f}, f
}

func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		retries  int
		passFrom int
		ok       bool
		attempts int
		output   string
	}{
		{"passes on the third of three", 2, 3, true, 3, "run 3"},
		{"fails after two of two", 1, 3, false, 2, "run 2"},
		{"no retries: one attempt", 0, 2, false, 1, "run 1"},
		{"passes at once: no retry used", 5, 1, true, 1, "run 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			argv, file := counter(t, tc.passFrom)
			r := &Runner{}
			h := r.Run(context.Background(), "", []Check{{Name: "c", Command: argv, Timeout: 5 * time.Second, Retries: tc.retries, Interval: time.Millisecond}}, false)
			c := h.Checks[0]
			if c.OK != tc.ok || c.Attempts != tc.attempts || !strings.Contains(c.Output, tc.output) {
				t.Errorf("%+v, want ok %v after %d attempts with %q", c, tc.ok, tc.attempts, tc.output)
			}
			runs, _ := os.ReadFile(file)
			if strings.TrimSpace(string(runs)) != strconv.Itoa(tc.attempts) {
				t.Errorf("the command ran %s times, want %d", runs, tc.attempts)
			}
		})
	}
}

// TestHangingChecksAreBounded: a command that hangs, one that ignores
// SIGTERM, an HTTP server that never answers: each fails after its
// timeout (plus the grace for the one that ignores SIGTERM).
func TestHangingChecksAreBounded(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stuck:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	pidFile := filepath.Join(t.TempDir(), "pid")
	const timeout, grace = 300 * time.Millisecond, 300 * time.Millisecond
	r := &Runner{Grace: grace}
	checks := []Check{
		{Name: "sleeps", Command: []string{"sleep", "600"}},
		{Name: "ignores-term", Command: []string{"sh", "-c", `trap "" TERM; echo $$ > "$1"; echo waiting; while :; do sleep 1; done`, "x", pidFile}},
		{Name: "http-hangs", HTTP: &HTTP{URL: srv.URL, ExpectStatus: 200}},
	}
	for i := range checks {
		checks[i].Timeout, checks[i].Retries = timeout, 1
	}
	start := time.Now()
	h := r.Run(context.Background(), "", checks, false)
	took := time.Since(start)
	// Two attempts of timeout+grace each, run side by side; the rest is slack for a loaded machine.
	if limit := 2*(timeout+grace) + 3*time.Second; took > limit {
		t.Errorf("hanging checks took %s, more than %s", took, limit)
	}
	for _, c := range h.Checks {
		if c.OK || c.Attempts != 2 || !strings.Contains(c.Output, "timed out after 300ms") {
			t.Errorf("%s: %+v, want a timeout after 2 attempts", c.Name, c)
		}
	}
	if c := h.Checks[0]; c.Name != "http-hangs" {
		t.Errorf("checks not sorted by name: %v", h.Checks)
	}
	if strings.Contains(h.Checks[1].Output, "waiting") == false {
		t.Errorf("the output of the killed command is lost: %q", h.Checks[1].Output)
	}
	// The shell that ignored SIGTERM was killed with its group.
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("process %d that ignored SIGTERM still runs", pid)
	}
}

func TestSettleAndCancel(t *testing.T) {
	r := &Runner{}
	ctx, cancel := context.WithCancel(context.Background())
	// settle false (a quiet tick): the long settle does not apply.
	h := r.Run(ctx, "", []Check{{Name: "c", Command: []string{"true"}, Timeout: time.Second, Settle: MaxSettle}}, false)
	if !h.OK {
		t.Fatalf("%+v", h)
	}
	// settle true, then a stop: the check fails without an attempt, at once.
	cancel()
	h = r.Run(ctx, "", []Check{{Name: "c", Command: []string{"true"}, Timeout: time.Second, Settle: MaxSettle}}, true)
	if h.OK || h.Checks[0].Attempts != 0 || !strings.Contains(h.Checks[0].Output, "stopped before the first attempt") {
		t.Errorf("%+v", h.Checks[0])
	}
}

func TestOutputIsBounded(t *testing.T) {
	r := &Runner{}
	h := r.Run(context.Background(), "", []Check{{Name: "loud", Timeout: 5 * time.Second,
		Command: []string{"sh", "-c", `i=0; while [ $i -lt 2000 ]; do printf '\033[31mline %d\n' $i; i=$((i+1)); done; exit 1`}}}, false)
	c := h.Checks[0]
	if len(c.Output) > manifest.MaxHealthOutput || !strings.Contains(c.Output, "line 1999") || !strings.Contains(c.Output, "exited with status 1") || strings.Contains(c.Output, "\033") {
		t.Errorf("output of %d bytes: %q", len(c.Output), c.Output)
	}
}

func TestValidate(t *testing.T) {
	ok := Check{Name: "c", Unit: "nginx.service", Timeout: time.Second}
	for _, tc := range []struct {
		name string
		edit func(*Check)
		want string
	}{
		{"fine", func(*Check) {}, ""},
		{"two kinds", func(c *Check) { c.Command = []string{"true"} }, "exactly one of unit, command and http (2 set)"},
		{"no kind", func(c *Check) { c.Unit = "" }, "(0 set)"},
		{"bad unit", func(c *Check) { c.Unit = "--all" }, "not a unit name"},
		{"zero timeout", func(c *Check) { c.Timeout = 0 }, "timeout 0 is out of range: it must be from 1ms to 10min"},
		{"long settle", func(c *Check) { c.Settle = time.Hour }, "settle 1h is out of range: it must be from 0 to 30min"},
		{"negative retries", func(c *Check) { c.Retries = -1 }, "retries -1"},
		{"user without command", func(c *Check) { c.User = "nobody" }, "user is only for command checks"},
		{"ftp url", func(c *Check) { c.Unit, c.HTTP = "", &HTTP{URL: "ftp://x/", ExpectStatus: 200} }, "not an http:// or https:// URL"},
		{"status 0", func(c *Check) { c.Unit, c.HTTP = "", &HTTP{URL: "http://x/", ExpectStatus: 0} }, "expectStatus 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "healthChecks.c:") {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
