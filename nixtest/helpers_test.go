package nixtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// nixConfig runs Nix offline: flakes on, no sandbox, no substituters.
const nixConfig = "experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nwarn-dirty = false"

// repoRoot is the repository root (this package lives one level down).
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot find the test's own file")
	}
	return filepath.Dir(filepath.Dir(file))
}

func needNix(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix is not installed (scripts/deps.sh installs it)")
	}
}

// run runs a command with the offline Nix configuration and returns its
// standard output; it fails the test with stderr on error.
func run(t testing.TB, dir string, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func runErr(t testing.TB, dir string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+nixConfig)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w\n%s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// nixString quotes s as a Nix string literal.
func nixString(s string) string {
	b, _ := json.Marshal(s)
	return strings.ReplaceAll(string(b), "${", `\${`)
}

// evalJSON evaluates a Nix expression (impure: it imports absolute paths)
// and decodes its JSON value into v.
func evalJSON(t testing.TB, expr string, v any) {
	t.Helper()
	out, err := evalErr(t, expr)
	if err != nil {
		t.Fatalf("nix eval: %v\nexpression:\n%s", err, expr)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("nix eval: output is not the expected JSON: %v\n%s", err, out)
	}
}

func evalErr(t testing.TB, expr string) (string, error) {
	t.Helper()
	return runErr(t, "", "nix", "eval", "--json", "--impure", "--expr", expr)
}

// hostEval evaluates modules (Nix expressions, e.g. paths of module files
// or attribute sets) with the stand-ins and applies sel (a Nix function of
// the evaluation's config) to the result.
func hostEval(t testing.TB, modules []string, sel string, v any) {
	t.Helper()
	evalJSON(t, hostExpr(t, modules, sel), v)
}

func hostExpr(t testing.TB, modules []string, sel string) string {
	root := repoRoot(t)
	return fmt.Sprintf(`let
  r = import %s { modules = [ %s ]; };
  sel = %s;
in sel r.config`, nixString(filepath.Join(root, "nixtest/testdata/eval.nix")), strings.Join(modules, "\n    "), sel)
}

// failedAssertions selects the messages of the failed assertions.
const failedAssertions = `c: map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions)`

// copyTree copies the named paths (files or directories, relative to the
// repository root) into dst, as the working tree has them. Nix sees only
// tracked files of a git flake; a copy outside git sees the files as they
// are (TestNixFilesAreTracked checks that nothing is left untracked).
func copyTree(t testing.TB, dst string, paths ...string) {
	t.Helper()
	root := repoRoot(t)
	for _, p := range paths {
		src := filepath.Join(root, p)
		err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			target := filepath.Join(dst, rel)
			if d.IsDir() {
				return os.MkdirAll(target, 0o755)
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		})
		if err != nil {
			t.Fatalf("copy %s: %v", p, err)
		}
	}
}

// flakePaths are the files the flake's outputs read.
var flakePaths = []string{"flake.nix", "flake.lock", "modules", "templates", "nix/package.nix", "nixtest/vm"}

// flakeCopy is a copy of the flake's files outside git, built once.
func flakeCopy(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	copyTree(t, dir, flakePaths...)
	return dir
}

// splitExec splits a systemd ExecStart= line as the modules write it:
// JSON-quoted words, with % and $ doubled.
func splitExec(t testing.TB, line string) []string {
	t.Helper()
	var words []string
	dec := json.NewDecoder(strings.NewReader(line))
	for dec.More() {
		var w string
		if err := dec.Decode(&w); err != nil {
			t.Fatalf("ExecStart %q is not a list of quoted words: %v", line, err)
		}
		w = strings.ReplaceAll(strings.ReplaceAll(w, "%%", "%"), "$$", "$")
		words = append(words, w)
	}
	return words
}

// sshKey generates an ed25519 key pair; it returns the private key's
// path and the public key without comment ("ssh-ed25519 AAAA…").
func sshKey(t testing.TB) (private, public string) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen is not installed (scripts/deps.sh installs it)")
	}
	private = filepath.Join(t.TempDir(), "key")
	run(t, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", private)
	data, err := os.ReadFile(private + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data))
	return private, f[0] + " " + f[1]
}

func publicKey(t testing.TB) string {
	_, pub := sshKey(t)
	return pub
}

var (
	bentoOnce sync.Once
	bentoBin  string
	bentoErr  error
)

// bentoBinary builds ./cmd/bento once per test run.
func bentoBinary(t testing.TB) string {
	t.Helper()
	bentoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bento-nixtest-")
		if err != nil {
			bentoErr = err
			return
		}
		// Nix's build users run it too (the check derivation).
		if err := os.Chmod(dir, 0o755); err != nil {
			bentoErr = err
			return
		}
		bentoBin = filepath.Join(dir, "bin", "bento")
		cmd := exec.Command("go", "build", "-o", bentoBin, "./cmd/bento")
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			bentoErr = fmt.Errorf("go build ./cmd/bento: %v\n%s", err, out)
		}
	})
	if bentoErr != nil {
		t.Fatal(bentoErr)
	}
	return bentoBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bentoBin != "" {
		os.RemoveAll(filepath.Dir(filepath.Dir(bentoBin)))
	}
	os.Exit(code)
}
