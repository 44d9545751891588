package serve_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/bento-nix/bento/internal/e2e"
	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	e2e.RemoveBinary()
	os.Exit(code)
}

// chromium finds Debian's chromium (scripts/deps.sh installs it). Under
// CI=true its absence fails the test: CI installs it, so a skip there
// would hide a browser test that never ran.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium on PATH under CI=true: scripts/deps.sh installs it (apt-get install chromium)")
	}
	t.Skip("no chromium on PATH: scripts/deps.sh installs it (apt-get install chromium)")
	return ""
}

// The fleet page in a real headless Chromium, served by the real bento
// serve over a fixture fleet published into a real sshd's chroots: the
// rows and states are read from the DOM, a real agent tick turns a row
// up-to-date without a reload, a host's page opens, and a host's hostile
// message stays text.
func TestBrowser(t *testing.T) {
	browser := chromium(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: a real sshd with per-host chroot users")
	}
	env := e2e.Start(t, fixture.Fleet{Hosts: []fixture.Host{
		{Name: "alpha", Bento: &fixture.Bento{Enable: true}},
		{Name: "mallory", Bento: &fixture.Bento{Enable: true}},
	}})
	pub := env.Publish(t)
	// mallory uploads a report of its own making, as a hostile host can.
	hostile := "switch failed <script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\"> \x1b]0;owned\x07\x1b[2J\u202egnp.exe"
	rep := manifest.Report{Format: manifest.Format, Host: "mallory", SeenVersion: pub["mallory"].Version, AttemptedVersion: pub["mallory"].Version,
		Stage: manifest.StageFailed, Result: manifest.ResultFailure, Error: hostile, StartedAt: time.Now().Add(-time.Minute), FinishedAt: time.Now()}
	data, _ := json.Marshal(rep)
	if err := os.MkdirAll(filepath.Dir(filepath.Join(env.Chroot("mallory"), manifest.StatusFile)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(env.Chroot("mallory"), manifest.StatusFile), data, 0o644); err != nil {
		t.Fatal(err)
	}

	base := startServe(t, "--flake", env.FleetDir, "--chroot-root", env.SSHD.Root, "--state-dir", t.TempDir(), "--listen", "127.0.0.1:0")

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.WindowSize(1200, 800))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	// The first Run starts the browser: no timeout on it (it would stop
	// the browser), each step below gets its own.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v", browser, err)
	}
	step := func(d time.Duration) (context.Context, context.CancelFunc) { return context.WithTimeout(bctx, d) }

	ctx, cancel := step(time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(`#hosts a[href="/host/alpha"]`))); err != nil {
		t.Fatalf("loading the fleet page: %v", err)
	}
	rows := readRows(t, ctx)
	if rows["alpha"] != "never-seen" || rows["mallory"] != "failing" || len(rows) != 2 {
		t.Fatalf("rows on the page: %v, want alpha never-seen and mallory failing", rows)
	}
	// Nothing mallory wrote ran or became markup: the title is the page's,
	// no element came from the message, and the escapes show as text.
	inert, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]any](`(() => {
		const cell = document.querySelector('#hosts a[href="/host/mallory"]').closest('tr').cells[6];
		return {title: document.title, elements: cell.querySelectorAll('*').length,
			text: cell.textContent, raw: /[\x1b\x07\u202e]/.test(document.body.innerHTML)};
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if inert["title"] != "bento fleet" || inert["elements"] != float64(0) || inert["raw"] != false ||
		!strings.Contains(inert["text"].(string), "<script>document.title='pwned'</script>") {
		t.Errorf("mallory's message is not inert on the page: %v", inert)
	}

	// The page is marked, then alpha's agent ticks through the real sshd:
	// the row turns up-to-date within 2 s, and the mark shows the page
	// was not reloaded.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.bentoMark = true`)); err != nil {
		t.Fatal(err)
	}
	if res := env.Host(t, "alpha").Run(t); res.ExitCode != 0 {
		t.Fatalf("alpha's tick: exit %d", res.ExitCode)
	}
	ticked := time.Now()
	wctx, wcancel := step(2 * time.Second)
	_, err = chromedp.Run(wctx, chromedp.Poll[bool](`document.querySelector('#hosts a[href="/host/alpha"]')?.closest('tr').cells[1].textContent === "up-to-date"`,
		chromedp.WithPollingInterval(20*time.Millisecond)))
	wcancel()
	if err != nil {
		t.Fatalf("alpha's row did not turn up-to-date within 2 s of its report (%v): rows %v", err, readRows(t, ctx))
	}
	t.Logf("the row turned up-to-date %v after the tick ended", time.Since(ticked).Round(time.Millisecond))
	if mark, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.bentoMark === true`)); err != nil || !mark {
		t.Errorf("the page was reloaded (mark %v, %v): it should update in place", mark, err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	// Screenshots go to the test's temporary directory, or to
	// $BENTO_SCREENSHOTS (CI keeps them as artifacts from there).
	dir := os.Getenv("BENTO_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, img := range map[string][]byte{"fleet.png": shot} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, img, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}

	// A narrow window (a phone): the rows become cards, nothing scrolls sideways.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(360, 740)); err != nil {
		t.Fatal(err)
	}
	fits, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth`))
	if err != nil || !fits {
		t.Errorf("in a 360 px window the page scrolls sideways (%v)", err)
	}
	if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		p := filepath.Join(dir, "fleet-narrow.png")
		if os.WriteFile(p, shot, 0o644) == nil {
			t.Logf("screenshot: %s", p)
		}
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1200, 800)); err != nil {
		t.Fatal(err)
	}

	// alpha's page: its state, its systems, its log; its history.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#hosts a[href="/host/alpha"]`)), chromedp.WaitVisible(chromedp.ID("history"))); err != nil {
		t.Fatalf("opening alpha's page: %v", err)
	}
	state, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("host-state")))
	if err != nil || state != "up-to-date" {
		t.Errorf("alpha's page: state %q (%v), want up-to-date", state, err)
	}
	systems, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("section")))
	if err != nil || !strings.Contains(systems, pub["alpha"].Built) {
		t.Errorf("alpha's page does not show its system %s: %q (%v)", pub["alpha"].Built, systems, err)
	}
	// The history: bento deploy recorded the publication, bento serve the
	// report it read.
	hist, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("history")))
	if err != nil || !strings.Contains(hist, "published "+pub["alpha"].Version[:8]) || !strings.Contains(hist, "up-to-date "+pub["alpha"].Version[:8]) {
		t.Errorf("alpha's history lacks its publication and its up-to-date report: %q (%v)", hist, err)
	}
	t.Logf("alpha's history section: %q", hist)
	logText, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("log")))
	if err != nil || !strings.Contains(logText, "Latest log") || strings.Contains(logText, "no log uploaded yet") {
		t.Errorf("alpha's log section: %q (%v)", logText, err)
	}
	shot, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err == nil {
		p := filepath.Join(dir, "host-alpha.png")
		if err := os.WriteFile(p, shot, 0o644); err == nil {
			t.Logf("screenshot: %s", p)
		}
	}
}

// /api/history is bento history --json, /api/status bento status --json
// (but for the time each was made).
func TestAPIsAreTheCommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a real sshd with per-host chroot users")
	}
	env := e2e.Start(t, fixture.Fleet{Hosts: []fixture.Host{{Name: "alpha", Bento: &fixture.Bento{Enable: true}}}})
	env.Publish(t)
	if res := env.Host(t, "alpha").Run(t); res.ExitCode != 0 {
		t.Fatalf("alpha's tick: exit %d", res.ExitCode)
	}
	state := t.TempDir()
	base := startServe(t, "--no-eval", "--chroot-root", env.SSHD.Root, "--state-dir", state, "--listen", "127.0.0.1:0")
	for _, tc := range []struct {
		url  string
		args []string
		// moving are the fields that differ between two readings: when
		// each was made, ages, the database's size.
		moving []string
	}{
		{"/api/status", []string{"status", "--no-eval", "--json", "--chroot-root", env.SSHD.Root, "--state-dir", state}, []string{"generatedAt", "historyBytes", "lastSeenSeconds"}},
		{"/api/history?host=alpha", []string{"history", "--json", "--chroot-root", env.SSHD.Root, "alpha"}, []string{"generatedAt"}},
	} {
		// Read after status, so that the report serve recorded is in both.
		cmd := exec.Command(e2e.Bento(t), tc.args...)
		cmd.Env = append(os.Environ(), fixture.Env()...)
		want, _ := cmd.Output() // status exits with the fleet's state
		resp, err := http.Get(base + tc.url)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		g, w := dropFields(t, got, tc.moving), dropFields(t, want, tc.moving)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("GET %s differs from bento %s:\n%s\n---\n%s", tc.url, strings.Join(tc.args, " "), got, want)
		}
		if len(g) == 0 {
			t.Errorf("GET %s: empty document", tc.url)
		}
	}
}

// dropFields decodes doc without the fields named, at any depth.
func dropFields(t *testing.T, doc []byte, fields []string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatalf("%v:\n%s", err, doc)
	}
	var drop func(v any)
	drop = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, f := range fields {
				delete(v, f)
			}
			for _, x := range v {
				drop(x)
			}
		case []any:
			for _, x := range v {
				drop(x)
			}
		}
	}
	drop(m)
	return m
}

// SIGTERM (systemd stopping the service) ends bento serve with exit 0
// even while a page holds an event stream open, and the stream ends.
func TestServeStopsOnSIGTERM(t *testing.T) {
	root := t.TempDir()
	cmd := exec.Command(e2e.Bento(t), "serve", "--no-eval", "--chroot-root", root, "--state-dir", t.TempDir(), "--listen", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), fixture.Env()...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stderr)
	base := ""
	for base == "" && sc.Scan() {
		if _, rest, ok := strings.Cut(sc.Text(), "listening on http://"); ok {
			base = "http://" + strings.TrimSuffix(strings.Fields(rest)[0], "/")
		}
	}
	if base == "" {
		t.Fatal("bento serve exited before listening")
	}
	copied := make(chan struct{})
	go func() { io.Copy(io.Discard, stderr); close(copied) }()
	resp, err := http.Get(base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := bufio.NewReader(resp.Body)
	if _, err := events.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	// Wait once the output is read to its end (the process closed it).
	go func() { <-copied; exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("bento serve after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bento serve did not stop within 10 s of SIGTERM with an event stream open")
	}
	if _, err := io.ReadAll(events); err != nil {
		t.Logf("the stream ended with %v", err) // ended either way: ReadAll returned
	}
}

// readRows reads host → state from the fleet table in the DOM.
func readRows(t *testing.T, ctx context.Context) map[string]string {
	t.Helper()
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries(
		[...document.querySelectorAll('#hosts tbody tr')].filter(tr => tr.cells.length == 7).map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]))`))
	if err != nil {
		t.Fatalf("reading the rows: %v", err)
	}
	return rows
}

// startServe runs the real bento serve until the test ends and returns
// its base URL, read from the line it prints once it listens.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, e2e.Bento(t), append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), fixture.Env()...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	found := make(chan string, 1)
	read := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-read // no t.Logf after the test
		cmd.Wait()
	})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			l := sc.Text()
			t.Logf("bento serve: %s", l)
			if _, rest, ok := strings.Cut(l, "listening on http://"); ok {
				found <- "http://" + strings.Fields(rest)[0]
			}
		}
		close(found)
	}()
	select {
	case u, ok := <-found:
		if !ok {
			t.Fatal("bento serve exited before listening (its output is above)")
		}
		return strings.TrimSuffix(u, "/")
	case <-time.After(2 * time.Minute):
		t.Fatal("bento serve did not listen within 2 minutes")
	}
	return ""
}
