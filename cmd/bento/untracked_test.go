package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// An evaluation error about a file git does not track names the file and
// the fix, instead of Nix's "getting status of '/nix/store/…-source/…'".
func TestEvalErrorNamesTheUntrackedFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tracked []string
		want    string
	}{
		// Nix names the directory it cannot find: every file under it.
		{"untracked directory", []string{"flake.nix"}, "host db-1: hosts/db-1.nix, hosts/web-1.nix are not tracked by git, so Nix cannot see them: git add hosts/db-1.nix hosts/web-1.nix"},
		{"untracked file beside tracked ones", []string{"flake.nix", "hosts/web-1.nix"}, "hosts/db-1.nix is not tracked by git, so Nix cannot see it: git add hosts/db-1.nix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write := func(p, s string) {
				os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
				if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			write("flake.nix", `{ outputs = { self }: { nixosConfigurations = {
  db-1 = { config = import ./hosts/db-1.nix; };
  web-1 = { config = import ./hosts/web-1.nix; };
}; }; }`)
			write("hosts/db-1.nix", `{ networking.hostName = "db-1"; }`)
			write("hosts/web-1.nix", `{ networking.hostName = "web-1"; }`)
			git := func(args ...string) {
				cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.email=t@example.org", "-c", "user.name=t"}, args...)...)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("git %v: %v\n%s", args, err, out)
				}
			}
			git("init", "-q")
			git(append([]string{"add"}, tc.tracked...)...)
			git("commit", "-qm", "fleet")
			_, stderr, code := runCLI(t, "hosts", "--flake", dir)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Errorf("bento hosts: exit %d, stderr:\n%s\nwant %q", code, stderr, tc.want)
			}
			if strings.Contains(stderr, "-source/") {
				t.Errorf("the message still shows Nix's store copy:\n%s", stderr)
			}
		})
	}
}
