package main

import (
	"strings"
	"testing"
)

// bento serve refuses, with exit 2 and a message naming the fix, what it
// must not do: listen beyond loopback without --allow-remote, take hosts.
func TestServeUsage(t *testing.T) {
	root := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--no-eval", "--chroot-root", root, "--listen", "0.0.0.0:0"}, "--allow-remote"},
		{[]string{"serve", "--no-eval", "--chroot-root", root, "--listen", ":0"}, "ssh -L"},
		{[]string{"serve", "--no-eval", "--chroot-root", root, "web-1"}, "takes no arguments"},
		{[]string{"serve", "--no-eval", "--chroot-root", root, "--every", "0s"}, "--every must be positive"},
	} {
		_, stderr, code := runCLI(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("bento %s: exit %d, %q; want exit %d naming %q", strings.Join(tc.args, " "), code, stderr, exitUsage, tc.want)
		}
	}
}
