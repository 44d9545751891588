package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
)

// The real binary, run by a user who is not root on a machine whose Nix
// has no daemon (this one's): the error says what needs root and why,
// not only Nix's "getting status of …/daemon-socket/socket: Permission
// denied".
func TestNotRootSaysWhatNeedsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the binary as another user")
	}
	// Readable and runnable by nobody: t.TempDir is root's alone.
	dir, err := os.MkdirTemp("", "bento-notroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "bento")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	fleet := filepath.Join(dir, "fleet")
	if err := fixture.Write(fleet, fixture.Fleet{Hosts: []fixture.Host{{Name: "web-1", Bento: &fixture.Bento{Enable: true}}}}); err != nil {
		t.Fatal(err)
	}
	exec.Command("chmod", "-R", "a+rX", dir).Run()
	cmd := exec.Command(bin, "hosts", "--flake", fleet)
	cmd.Env = append(fixture.Env(), "HOME="+dir, "PATH="+os.Getenv("PATH"), "XDG_CACHE_HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != exitFailed {
		t.Fatalf("bento hosts as nobody: %v, want exit %d\n%s", err, exitFailed, out)
	}
	for _, want := range []string{"bento hosts needs root here", "Nix writes /nix/store and /nix/var/nix itself, which root owns", "sudo bento hosts", "Permission denied"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestExplainRootLeavesOtherErrors(t *testing.T) {
	nixErr := failed(errString("nix eval: error: getting status of /nix/var/nix/daemon-socket/socket: Permission denied"))
	cases := []struct {
		name string
		euid int
		err  error
		want string
	}{
		{"root", 0, nixErr, "nix eval: error: getting status"},
		{"another error", 1000, failed(errString("host web-1: build: boom")), "host web-1: build: boom"},
		{"not root", 1000, nixErr, "bento deploy needs root here"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := explainRoot("bento deploy", tc.euid, tc.err)
			if !strings.HasPrefix(got.Error(), tc.want) || exitCode(&strings.Builder{}, got) != exitFailed {
				t.Errorf("%v, want it to start with %q (exit 1)", got, tc.want)
			}
		})
	}
}

type errString string

func (e errString) Error() string { return string(e) }
