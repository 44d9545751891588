package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Without --config the agent reads the module's /etc/bento/agent.json
// when it exists, and runs on flags and variables alone when it does not.
func TestAgentConfigDefaultsToTheModulesFile(t *testing.T) {
	old := defaultAgentConfig
	t.Cleanup(func() { defaultAgentConfig = old })
	defaultAgentConfig = filepath.Join(t.TempDir(), "agent.json")
	t.Setenv("BENTO_CONFIG", "")
	os.Unsetenv("BENTO_CONFIG")

	// No file: only the missing settings are named.
	_, stderr, code := runCLI(t, "agent", "run", "--host", "alpha")
	if code != 2 || !strings.Contains(stderr, "server is not set") || strings.Contains(stderr, "bogus") {
		t.Fatalf("without a default file: exit %d, %q", code, stderr)
	}

	if err := os.WriteFile(defaultAgentConfig, []byte(`{"host": "alpha", "mode": "bogus"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = runCLI(t, "agent", "run")
	if code != 2 || !strings.Contains(stderr, `mode "bogus"`) {
		t.Errorf("the default file was not read: exit %d, %q", code, stderr)
	}
	// Flags still win over the file.
	_, stderr, code = runCLI(t, "agent", "run", "--mode", "fetch")
	if code != 2 || strings.Contains(stderr, "bogus") {
		t.Errorf("--mode did not override the default file: exit %d, %q", code, stderr)
	}
	// An explicit --config replaces the default.
	other := filepath.Join(t.TempDir(), "other.json")
	os.WriteFile(other, []byte(`{"host": "alpha", "mode": "odd"}`), 0o600)
	_, stderr, _ = runCLI(t, "agent", "run", "--config", other)
	if !strings.Contains(stderr, `mode "odd"`) || strings.Contains(stderr, "bogus") {
		t.Errorf("--config did not replace the default file: %q", stderr)
	}
}
