package main

import (
	"os/exec"
	"strings"
	"testing"
)

func TestCompletion(t *testing.T) {
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"completion", "bash"}, 0, "complete -o default -F _bento_complete bento"},
		{[]string{"completion", "zsh"}, 0, "bashcompinit"},
		{[]string{"completion", "fish"}, 2, "bento completion bash"},
		{[]string{"completion"}, 2, "say which shell"},
	}
	for _, tc := range cases {
		stdout, stderr, code := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("bento %v: exit %d, output %q, want exit %d and %q", tc.args, code, stdout+stderr, tc.code, tc.want)
		}
	}
}

// The bash script really completes command names through bento itself.
func TestBashCompletionCompletesCommands(t *testing.T) {
	bin := t.TempDir() + "/bento"
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	script, _, _ := runCLI(t, "completion", "bash")
	sh := script + "\nCOMP_WORDS=(" + bin + " dep); COMP_CWORD=1; _bento_complete; echo \"${COMPREPLY[@]}\"\n"
	out, err := exec.Command("bash", "-c", sh).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "deploy" {
		t.Fatalf("completing 'bento dep': %q, %v", out, err)
	}
}
