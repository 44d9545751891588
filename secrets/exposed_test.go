package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A plaintext secret readable by its group or by others is warned about,
// naming the file, who can read it and the fix; 0600 or 0400 files and
// encrypted ones are not.
func TestExposed(t *testing.T) {
	tests := []struct {
		file string
		mode os.FileMode
		want string // "" for no warning
	}{
		{"owner-only", 0o600, ""},
		{"read-only", 0o400, ""},
		{"group", 0o640, "is readable by its group (mode 0640)"},
		{"world", 0o604, "is readable by every user (mode 0604)"},
		{"both", 0o644, "is readable by its group and every user (mode 0644)"},
		{"db.age", 0o644, ""},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "alpha", tt.file)
			writeFile(t, p, "s3cret")
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			files, err := Collect(dir, "alpha")
			if err != nil {
				t.Fatal(err)
			}
			got := Exposed(dir, "alpha", files)
			if tt.want == "" {
				if len(got) != 0 {
					t.Errorf("warnings %q, want none", got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0], tt.want) || !strings.Contains(got[0], "chmod 0600 "+p) || !strings.HasPrefix(got[0], "secret alpha/"+tt.file+": ") {
				t.Errorf("warnings %q, want one containing %q and the chmod", got, tt.want)
			}
			if strings.Contains(strings.Join(got, ""), "s3cret") {
				t.Error("a warning shows the secret's content")
			}
		})
	}
}

// Through a symlink inside the secrets directory, the file it leads to is
// judged.
func TestExposedFollowsTheSymlinkInside(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared", "ca.key")
	writeFile(t, shared, "k")
	if err := os.Chmod(shared, 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "alpha"), 0o700)
	if err := os.Symlink("../shared/ca.key", filepath.Join(dir, "alpha", "ca.key")); err != nil {
		t.Fatal(err)
	}
	files, err := Collect(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if got := Exposed(dir, "alpha", files); len(got) != 1 || !strings.Contains(got[0], shared+" is readable") {
		t.Errorf("warnings %q, want one naming %s", got, shared)
	}
}
