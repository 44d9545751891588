package serve_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/serve"
	"github.com/bento-nix/bento/status"
)

const (
	sysA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a-1"
	v1   = "1111111111111111aaaa"
	v2   = "2222222222222222bbbb"
)

// chroot writes hosts' chroots as the publisher and the agents do.
type chroot struct {
	t    testing.TB
	root string
}

func newChroot(t testing.TB) chroot { return chroot{t, t.TempDir()} }

func (c chroot) write(host, rel string, v any) {
	c.t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	p := filepath.Join(c.root, host, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		c.t.Fatal(err)
	}
	// Replaced by rename, as the publisher and the SFTP upload do.
	if err := os.WriteFile(p+".tmp", data, 0o644); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		c.t.Fatal(err)
	}
}

func (c chroot) publish(host, version string) {
	c.t.Helper()
	c.write(host, manifest.ManifestFile, manifest.Manifest{
		Format: manifest.Format, Host: host, Version: version, PublishedAt: time.Now().Add(-time.Hour),
		ExpectedToplevel: sysA, Flake: manifest.Flake{Attr: fleet.ConfigAttr(host)},
		Files: []manifest.File{{Path: "flake.nix", Mode: 0o644, Size: 10, SHA256: strings.Repeat("0", 64)}},
	})
}

func (c chroot) report(host string, r manifest.Report) {
	c.t.Helper()
	r.Format, r.Host = manifest.Format, host
	c.write(host, manifest.StatusFile, r)
}

func applied(v string) manifest.Report {
	now := time.Now()
	return manifest.Report{SeenVersion: v, AppliedVersion: v, AttemptedVersion: v,
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess,
		ExpectedToplevel: sysA, ActualToplevel: sysA, CurrentSystem: sysA, BootedSystem: sysA,
		Operation: "switch", StartedAt: now.Add(-2 * time.Minute), FinishedAt: now.Add(-time.Minute)}
}

func failed(v, msg string) manifest.Report {
	r := applied("")
	r.SeenVersion, r.AttemptedVersion, r.AppliedVersion = v, v, ""
	r.Stage, r.Result, r.Error = manifest.StageFailed, manifest.ResultFailure, msg
	return r
}

// hostile is a message with markup and terminal escapes.
const hostile = "boom <script>document.title='pwned'</script> \x1b]0;title\x07\x1b[31mred\u202e"

// start serves root with a running watch, until the test ends.
func start(t *testing.T, o serve.Options) *httptest.Server {
	t.Helper()
	o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	s := serve.New(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		ts.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ts
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func threeHosts(t *testing.T) chroot {
	c := newChroot(t)
	c.publish("web-1", v1)
	c.report("web-1", applied(v1))
	c.publish("web-2", v2)
	c.report("web-2", applied(v1))
	c.publish("db-1", v1)
	r := failed(v1, hostile)
	r.Result, r.RollbackReason = manifest.ResultRolledBack, manifest.RollbackHealthCheck
	r.Health = &manifest.Health{System: sysA, CheckedAt: time.Now(), OK: false, Checks: []manifest.HealthCheck{
		{Name: "nginx", Kind: manifest.HealthUnit, OK: true, Attempts: 1},
		{Name: "http <i>home</i>", Kind: manifest.HealthHTTP, OK: false, Attempts: 3, Output: "503 <script>x</script>\x1b[31m"},
	}}
	c.report("db-1", r)
	return c
}

func TestFleetPage(t *testing.T) {
	c := threeHosts(t)
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}})
	for _, tc := range []struct {
		query     string
		wantHosts []string
	}{
		{"", []string{"db-1", "web-2", "web-1"}}, // most urgent first
		{"?sort=name", []string{"db-1", "web-1", "web-2"}},
		{"?state=up-to-date", []string{"web-1"}},
		{"?q=web", []string{"web-2", "web-1"}},
		{"?q=web-*&sort=name", []string{"web-1", "web-2"}},
		{"?q=nothing", nil},
	} {
		t.Run(tc.query, func(t *testing.T) {
			resp, body := get(t, ts.URL+"/"+tc.query)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := hostsIn(body); strings.Join(got, " ") != strings.Join(tc.wantHosts, " ") {
				t.Errorf("hosts %q, want %q", got, tc.wantHosts)
			}
		})
	}
	resp, body := get(t, ts.URL+"/")
	for _, want := range []string{`class="r-bad"><td><a href="/host/db-1">db-1</a><td>rolled-back<`, `class="r-work"><td><a href="/host/web-2">web-2</a><td>pending<`, `class="r-ok"><td><a href="/host/web-1">web-1</a><td>up-to-date<`, `<b>3</b> hosts`} {
		if !strings.Contains(body, want) {
			t.Errorf("the fleet page lacks %s:\n%s", want, body)
		}
	}
	checkInert(t, body)
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if !strings.Contains(body, `<noscript><meta http-equiv="refresh"`) {
		t.Error("without JavaScript the page does not refresh itself")
	}
	if strings.Contains(body, "<script>") || strings.Contains(body, " style=") || strings.Contains(body, " on") && strings.Contains(body, "onclick") {
		t.Error("the page has inline script or style")
	}
}

// checkInert: the hostile message is on the page as text, never markup
// nor a raw escape.
func checkInert(t *testing.T, body string) {
	t.Helper()
	if strings.Contains(body, "<script>document") || strings.ContainsAny(body, "\x1b\x07\u202e") {
		t.Errorf("host-written markup or escapes reach the page raw:\n%q", body)
	}
	if !strings.Contains(body, "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;") {
		t.Errorf("the host's message is not shown escaped:\n%s", body)
	}
}

// hostsIn lists the hosts of the fleet table's rows, in order.
func hostsIn(body string) []string {
	var hosts []string
	for _, part := range strings.Split(body, `<td><a href="/host/`)[1:] {
		hosts = append(hosts, part[:strings.IndexByte(part, '"')])
	}
	return hosts
}

func TestBadRequests(t *testing.T) {
	c := threeHosts(t)
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}})
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/?sort=size", 400},
		{"GET", "/?state=happy", 400},
		{"GET", "/host/nobody", 404},
		{"GET", "/host/%2e%2e%2fetc", 404},
		{"POST", "/", 405},
		{"DELETE", "/api/status", 405},
		{"GET", "/api/history", 404}, // no history database
		{"GET", "/static/live.js", 200},
		{"GET", "/static/style.css", 200},
		{"GET", "/static/../serve.go", 404},
	} {
		req, _ := http.NewRequest(tc.method, ts.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}

func TestHostPage(t *testing.T) {
	c := threeHosts(t)
	p := filepath.Join(c.root, "db-1", manifest.LogsDir, "20260101T000000Z.log")
	os.MkdirAll(filepath.Dir(p), 0o755)
	log := strings.Repeat("early line\n", 10000) + "building <b>x</b>\n\x1b[2Jcleared?\nlast line\n"
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}, LogTailBytes: 4096})
	resp, body := get(t, ts.URL+"/host/db-1")
	if resp.StatusCode != 200 {
		t.Fatalf("%d: %s", resp.StatusCode, body)
	}
	checkInert(t, body)
	for _, want := range []string{`id="host-state">rolled-back`, sysA, `Health checks <span class="st-bad">failed`,
		`<span class="st-bad">failed</span> http <b>http &lt;i&gt;home&lt;/i&gt;</b> after 3 attempts<pre class="log">503 &lt;script&gt;x&lt;/script&gt;\x1b[31m</pre>`,
		`<span class="st-ok">ok</span> unit <b>nginx</b>`, "building &lt;b&gt;x&lt;/b&gt;", `\x1b[2Jcleared?`, "last line", "the last 4096 bytes"} {
		if !strings.Contains(body, want) {
			t.Errorf("the host page lacks %q", want)
		}
	}
	if n := strings.Count(body, "early line"); n == 0 || n > 4096/len("early line\n") {
		t.Errorf("%d early lines of the log on the page: the tail is not capped at 4096 bytes", n)
	}
}

func TestAPIStatus(t *testing.T) {
	c := threeHosts(t)
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}})
	resp, body := get(t, ts.URL+"/api/status")
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var doc struct {
		Format int `json:"format"`
		Hosts  []struct {
			Host  string `json:"host"`
			State string `json:"state"`
			Error string `json:"error"`
		} `json:"hosts"`
		ExitCode int `json:"exitCode"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("%v:\n%s", err, body)
	}
	got := map[string]string{}
	for _, h := range doc.Hosts {
		got[h.Host] = h.State
	}
	if doc.Format != status.Format || got["db-1"] != "rolled-back" || got["web-2"] != "pending" || got["web-1"] != "up-to-date" || doc.ExitCode != status.ExitFailing {
		t.Errorf("/api/status: %s", body)
	}
	// As bento status --json: escapes encoding/json leaves raw are escaped.
	if strings.ContainsAny(body, "\x1b\u202e") || !strings.Contains(body, `\u001b`) {
		t.Errorf("/api/status passes terminal escapes raw: %q", body)
	}
}

func TestMetrics(t *testing.T) {
	c := threeHosts(t)
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}})
	resp, body := get(t, ts.URL+"/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("%d: %s", resp.StatusCode, body)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	state := fams["bento_host_state"]
	if state == nil {
		t.Fatalf("no bento_host_state:\n%s", body)
	}
	found := false
	for _, m := range state.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["host"] == "db-1" && labels["state"] == "rolled-back" {
			found = m.GetGauge().GetValue() == 1
		}
	}
	if !found {
		t.Errorf("bento_host_state{host=db-1,state=rolled-back} is not 1:\n%s", body)
	}
	for _, name := range []string{"bento_hosts", "bento_status_exit_code", "bento_host_system_match", "bento_host_last_seen_timestamp_seconds"} {
		if fams[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// A report arriving reaches an open event stream within 2 s, and the
// view fetched then shows it.
func TestEventsOnReport(t *testing.T) {
	c := threeHosts(t)
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}, Every: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	events := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events <- data
			}
		}
		close(events)
	}()
	first := <-events
	// The same view before and after: the answer kept for a snapshot
	// is never served for the next.
	if _, body := get(t, ts.URL+"/live/fleet?state=up-to-date"); strings.Join(hostsIn(body), " ") != "web-1" {
		t.Fatalf("before the report: up-to-date hosts %q", hostsIn(body))
	}
	c.report("web-2", applied(v2))
	reported := time.Now()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the event stream ended")
		}
		if ev == first {
			t.Fatalf("the same snapshot %s twice", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no change event within 2 s of a report")
	}
	t.Logf("change event %v after the report", time.Since(reported))
	_, body := get(t, ts.URL+"/live/fleet?state=up-to-date")
	if got := hostsIn(body); strings.Join(got, " ") != "web-1 web-2" {
		t.Errorf("after the report: up-to-date hosts %q, want web-1 web-2", got)
	}
	if strings.Contains(body, "<html") {
		t.Error("the live fragment is a whole page")
	}
}

func TestListen(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:0", false, true},
		{"[::1]:0", false, true},
		{"localhost:0", false, true},
		{"0.0.0.0:0", false, false},
		{":0", false, false},
		{"0.0.0.0:0", true, true},
		{"8470", false, false},
		{"unix:", false, false},
	} {
		l, err := serve.Listen(ctx, tc.addr, tc.remote)
		if (err == nil) != tc.ok {
			t.Errorf("Listen(%q, %v): %v, want ok=%v", tc.addr, tc.remote, err, tc.ok)
		}
		if l != nil {
			l.Close()
		}
	}
	sock := filepath.Join(t.TempDir(), "serve.sock")
	for range 2 { // a socket left behind is replaced
		l, err := serve.Listen(ctx, "unix:"+sock, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := net.Dial("unix", sock); err != nil {
			t.Fatal(err)
		}
		if l, ok := l.(*net.UnixListener); ok {
			l.SetUnlinkOnClose(false)
		}
		l.Close()
	}
	plain := filepath.Join(t.TempDir(), "file")
	os.WriteFile(plain, nil, 0o644)
	if _, err := serve.Listen(ctx, "unix:"+plain, false); err == nil {
		t.Error("Listen replaced a file that is no socket")
	}
}

// The rollout, when there is one, heads the fleet page, its words made
// safe; one that cannot be read says why.
func TestRolloutOnTheFleetPage(t *testing.T) {
	c := threeHosts(t)
	ro := &serve.Rollout{ID: "r-1", Phase: "halted", Reason: "web-2 failed <b>x</b>\x1b[2J", Current: 1, Since: time.Now().Add(-time.Minute),
		Waves: []serve.RolloutWave{{Number: 0, Hosts: 1, State: "passed"}, {Number: 1, Hosts: 2, State: "halted", Verdict: "1 of 2 failed"}}}
	for _, tc := range []struct {
		name string
		read func() (*serve.Rollout, error)
		want []string
		not  []string
	}{
		{"none", func() (*serve.Rollout, error) { return nil, nil }, nil, []string{`id="rollout"`}},
		{"halted", func() (*serve.Rollout, error) { return ro, nil },
			[]string{`id="rollout"`, `class="st-bad">halted`, "web-2 failed &lt;b&gt;x&lt;/b&gt;\\x1b[2J", `<li class="current">wave 1: 2 hosts, <span class="st-bad">halted</span> — 1 of 2 failed`}, []string{"\x1b"}},
		{"unreadable", func() (*serve.Rollout, error) { return nil, errors.New("rollout record: format 9") }, []string{"rollout: rollout record: format 9"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := start(t, serve.Options{Status: status.Options{Root: c.root}, Rollout: tc.read})
			_, body := get(t, ts.URL+"/")
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("the page lacks %q", w)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(body, w) {
					t.Errorf("the page has %q", w)
				}
			}
		})
	}
}

// Event streams are bounded: one more than MaxStreams is refused with 503
// (the page retries later).
func TestMaxStreams(t *testing.T) {
	c := threeHosts(t)
	ts := start(t, serve.Options{Status: status.Options{Root: c.root}, MaxStreams: 1})
	open := func() (*http.Response, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/events", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, cancel
	}
	first, cancelFirst := open()
	if first.StatusCode != 200 {
		t.Fatalf("first stream: %d", first.StatusCode)
	}
	// Its first event says the stream holds its place.
	if _, err := bufio.NewReader(first.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	second, cancelSecond := open()
	second.Body.Close()
	cancelSecond()
	if second.StatusCode != http.StatusServiceUnavailable || second.Header.Get("Retry-After") == "" {
		t.Errorf("a stream over the limit: %d (Retry-After %q), want 503 with Retry-After", second.StatusCode, second.Header.Get("Retry-After"))
	}
	cancelFirst()
	first.Body.Close()
}

// Filtering by tag needs the flake's options: with them the form lists
// the tags and ?tag= keeps the hosts that carry it.
func TestTagFilter(t *testing.T) {
	c := threeHosts(t)
	host := func(name string, tags ...string) fleet.Host {
		return fleet.Host{Name: name, Managed: true, Enable: true, Attr: fleet.ConfigAttr(name), Options: fleet.Options{Tags: tags}}
	}
	fl := &fleet.Fleet{Hosts: []fleet.Host{host("web-1", "web", "eu"), host("web-2", "web", "us"), host("db-1", "db", "eu")}}
	ts := start(t, serve.Options{Status: status.Options{Root: c.root, Fleet: fl}})
	for _, tc := range []struct{ query, want string }{
		{"?tag=web&sort=name", "web-1 web-2"},
		{"?tag=eu&sort=name", "db-1 web-1"},
		{"?tag=nothing", ""},
	} {
		_, body := get(t, ts.URL+"/"+tc.query)
		if got := strings.Join(hostsIn(body), " "); got != tc.want {
			t.Errorf("%s: hosts %q, want %q", tc.query, got, tc.want)
		}
	}
	_, body := get(t, ts.URL+"/")
	if !strings.Contains(body, "<option>db</option><option>eu</option><option>us</option><option>web</option>") {
		t.Errorf("the form does not list the fleet's tags:\n%s", body)
	}
}
