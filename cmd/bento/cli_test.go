package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/bento-nix/bento/internal/fixture"
)

// runCLI runs bento in-process with args (without the program name) and
// returns what it printed and its exit status, as a user would see them.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	for _, kv := range fixture.Env() {
		k, v, _ := cutEnv(kv)
		t.Setenv(k, v)
	}
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer = &out
	app.ErrWriter = &errOut
	err := run(context.Background(), app, append([]string{"bento"}, args...))
	code = exitCode(&errOut, err)
	return out.String(), errOut.String(), code
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}
