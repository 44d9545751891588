package secrets

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// listTree names every entry below dir, for "nothing was written there".
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err == nil && p != dir {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// A symlink in any directory on the way to a secret's path (planted by
// whoever can write that directory) refuses the install with an error
// naming it; nothing is written where it points, and the other secrets
// install.
func TestInstallRefusesASymlinkInAParentDirectory(t *testing.T) {
	tests := []struct {
		name string
		// plant makes the trap under target, pointing at outside, and
		// returns the secret's path.
		plant func(t *testing.T, target, outside string) string
		// link is the symlink the error must name, relative to target.
		link string
	}{
		{
			name: "the parent itself",
			plant: func(t *testing.T, target, outside string) string {
				mustSymlink(t, outside, filepath.Join(target, "app"))
				return filepath.Join(target, "app", "password")
			},
			link: "app",
		},
		{
			name: "a grandparent, below which directories are missing",
			plant: func(t *testing.T, target, outside string) string {
				mustSymlink(t, outside, filepath.Join(target, "run"))
				return filepath.Join(target, "run", "app", "secrets", "password")
			},
			link: "run",
		},
		{
			name: "a relative symlink deeper down",
			plant: func(t *testing.T, target, outside string) string {
				if err := os.MkdirAll(filepath.Join(target, "a", "b"), 0o755); err != nil {
					t.Fatal(err)
				}
				rel, err := filepath.Rel(filepath.Join(target, "a", "b"), outside)
				if err != nil {
					t.Fatal(err)
				}
				mustSymlink(t, rel, filepath.Join(target, "a", "b", "c"))
				return filepath.Join(target, "a", "b", "c", "password")
			},
			link: "a/b/c",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, outside := t.TempDir(), t.TempDir()
			path := tt.plant(t, target, outside)
			secret, other := randomSecret(t), randomSecret(t)
			specs := map[string]Spec{
				"db":  {Path: path},
				"api": {Path: filepath.Join(target, "api")},
			}
			dir, files := stage(t, map[string]string{"db": secret, "api": other})
			o, err := (&Installer{}).Install(context.Background(), dir, files, specs, State{})
			if err != nil {
				t.Fatal(err)
			}
			msg := o.Errors["db"]
			for _, want := range []string{"secret db: ", filepath.Join(target, tt.link) + " is a symlink", "a secret is never installed through a symlink"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			if got := listTree(t, outside); len(got) != 0 {
				t.Errorf("written through the symlink: %v", got)
			}
			if _, ok := o.State["db"]; ok {
				t.Error("the refused secret is recorded as installed")
			}
			checkInstalled(t, specs["api"].Path, fileWant{other, 0o400, 0, 0})
		})
	}
}

// A symlink at the secret's path itself is replaced, never written
// through; and a secret no longer published whose directory became a
// symlink is left alone, with its target untouched.
func TestInstallNeverWritesThroughASymlink(t *testing.T) {
	ctx := context.Background()
	target, outside := t.TempDir(), t.TempDir()
	victim := filepath.Join(outside, "victim")
	writeFile(t, victim, "keep")
	path := filepath.Join(target, "sub", "password")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	mustSymlink(t, victim, path)
	secret := randomSecret(t)
	specs := map[string]Spec{"db": {Path: path}}
	dir, files := stage(t, map[string]string{"db": secret})
	inst := &Installer{}
	o, err := inst.Install(ctx, dir, files, specs, State{})
	if err != nil || len(o.Errors) != 0 {
		t.Fatalf("install: %v %v", err, o.Errors)
	}
	checkInstalled(t, path, fileWant{secret, 0o400, 0, 0})
	if data, _ := os.ReadFile(victim); string(data) != "keep" {
		t.Errorf("the symlink's target was overwritten: %q", data)
	}

	// The secret's directory is swapped for a symlink to where a file of
	// the same name lives; then the secret is withdrawn.
	if err := os.Rename(filepath.Join(target, "sub"), filepath.Join(target, "old")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(outside, "password"), "keep")
	mustSymlink(t, outside, filepath.Join(target, "sub"))
	o, err = inst.Install(ctx, dir, nil, map[string]Spec{}, o.State)
	if err != nil {
		t.Fatal(err)
	}
	if msg := o.Errors["db"]; !strings.Contains(msg, "is a symlink") {
		t.Errorf("removal through a symlink: error %q", msg)
	}
	if data, _ := os.ReadFile(filepath.Join(outside, "password")); string(data) != "keep" {
		t.Errorf("removed or changed through a symlink: %q", data)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
