package secrets

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestCollect(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		want    []string // paths, in order
		wantErr string
	}{
		{
			name: "no secrets directory for the host",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "other", "x"), "x")
			},
		},
		{
			name: "files sorted, dot files ignored, .age kept as is",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "alpha", "wg.key"), "k")
				writeFile(t, filepath.Join(dir, "alpha", "db.age"), "age")
				writeFile(t, filepath.Join(dir, "alpha", ".gitkeep"), "")
				writeFile(t, filepath.Join(dir, "alpha", "api_token"), "t")
			},
			want: []string{"api_token", "db.age", "wg.key"},
		},
		{
			name: "symlink inside the secrets directory is followed",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "shared", "ca.pem"), "ca")
				os.MkdirAll(filepath.Join(dir, "alpha"), 0o755)
				if err := os.Symlink("../shared/ca.pem", filepath.Join(dir, "alpha", "ca.pem")); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"ca.pem"},
		},
		{
			name: "symlink out of the secrets directory",
			setup: func(t *testing.T, dir string) {
				os.MkdirAll(filepath.Join(dir, "alpha"), 0o755)
				if err := os.Symlink("/etc/passwd", filepath.Join(dir, "alpha", "passwd")); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "outside the secrets directory",
		},
		{
			name: "subdirectory",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "alpha", "nested", "x"), "x")
			},
			wantErr: "alpha/nested is a directory",
		},
		{
			name: "fifo",
			setup: func(t *testing.T, dir string) {
				os.MkdirAll(filepath.Join(dir, "alpha"), 0o755)
				if err := syscall.Mkfifo(filepath.Join(dir, "alpha", "pipe"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "alpha/pipe is not a regular file",
		},
		{
			name: "clear and encrypted copies of one secret",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "alpha", "db"), "a")
				writeFile(t, filepath.Join(dir, "alpha", "db.age"), "b")
			},
			wantErr: "both db and db.age",
		},
		{
			name: "name that cannot be a module attribute",
			setup: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "alpha", "db~"), "a")
			},
			wantErr: `invalid secret name "db~"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(t, dir)
			files, err := Collect(dir, "alpha")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Collect error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range files {
				got = append(got, f.Path)
				if f.Mode != PublishedMode || len(f.SHA256) != 64 {
					t.Errorf("%s: mode %o sha256 %q", f.Path, f.Mode, f.SHA256)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("Collect = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCollectRefusesBadHostName(t *testing.T) {
	if _, err := Collect(t.TempDir(), "../etc"); err == nil {
		t.Fatal("Collect accepted host ../etc")
	}
}

func TestCollectHashesContent(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "alpha", "k"), "hello")
	files, err := Collect(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	// sha256("hello")
	want := manifest.File{Path: "k", Mode: 0o400, Size: 5, SHA256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}
	if len(files) != 1 || files[0] != want {
		t.Fatalf("Collect = %+v, want %+v", files, want)
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "alpha", "db"), "s3cret")
	writeFile(t, filepath.Join(dir, "alpha", "tls.age"), "ciphertext")
	files, err := Collect(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := LookupOwner("nobody")
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "v1")
	os.Mkdir(dst, 0o700)
	if err := Write(context.Background(), dst, dir, "alpha", files, nobody); err != nil {
		t.Fatal(err)
	}
	checkOwned(t, dst, 0o500|os.ModeDir, nobody)
	for _, f := range files {
		p := filepath.Join(dst, f.Path)
		checkOwned(t, p, 0o400, nobody)
		_, sum, _ := hashFile(p)
		if sum != f.SHA256 {
			t.Errorf("%s: published content differs from the source", f.Path)
		}
	}
}

func TestWriteRefusesChangedSecret(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "alpha", "db"), "old")
	files, err := Collect(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "alpha", "db"), "new")
	dst := t.TempDir()
	err = Write(context.Background(), dst, dir, "alpha", files, NoOwner)
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("Write error = %v, want ErrChanged", err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a half-published secret was left behind: %v", err)
	}
}

func checkOwned(t *testing.T, p string, mode os.FileMode, o Owner) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != mode {
		t.Errorf("%s: mode %v, want %v", p, fi.Mode(), mode)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != o.UID || int(st.Gid) != o.GID {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, o.UID, o.GID)
	}
}

func gitRun(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.invalid"}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v: %s", args, err, out)
	}
}

func TestCheckExposure(t *testing.T) {
	tests := []struct {
		name     string
		git      bool
		ignore   bool
		track    bool
		plain    bool
		classic  bool
		outside  bool
		wantErr  string
		wantNote string
	}{
		{name: "plain directory flake", wantErr: "not a git work tree"},
		{name: "classic layout is never copied whole", classic: true},
		{name: "secrets outside the flake", outside: true},
		{name: "git, ignored", git: true, ignore: true},
		{name: "git, untracked but not ignored", git: true, wantNote: "not in .gitignore"},
		{name: "git, tracked", git: true, track: true, wantErr: "is tracked by git"},
		{name: "git, but given as path:", git: true, ignore: true, plain: true, wantErr: "given as path:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fleetDir := t.TempDir()
			writeFile(t, filepath.Join(fleetDir, "flake.nix"), "{ outputs = _: { }; }\n")
			sdir := filepath.Join(fleetDir, "secrets")
			if tt.outside {
				sdir = filepath.Join(t.TempDir(), "secrets")
			}
			writeFile(t, filepath.Join(sdir, "alpha", "db"), "x")
			if tt.git {
				gitRun(t, fleetDir, "init", "-q")
				if tt.ignore {
					writeFile(t, filepath.Join(fleetDir, ".gitignore"), "/secrets/\n")
				}
				gitRun(t, fleetDir, "add", "flake.nix")
				if tt.ignore {
					gitRun(t, fleetDir, "add", ".gitignore")
				}
				if tt.track {
					gitRun(t, fleetDir, "add", "secrets")
				}
				gitRun(t, fleetDir, "commit", "-q", "-m", "x")
			}
			note, err := CheckExposure(context.Background(), fleetDir, sdir, tt.plain, tt.classic)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("CheckExposure error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (tt.wantNote == "") != (note == "") || !strings.Contains(note, tt.wantNote) {
				t.Fatalf("note = %q, want %q", note, tt.wantNote)
			}
		})
	}
}

func TestResolveDir(t *testing.T) {
	fleetDir := t.TempDir()
	if d, err := ResolveDir("", fleetDir); err != nil || d != filepath.Join(fleetDir, "secrets") {
		t.Errorf("default = %q, %v", d, err)
	}
	if d, err := ResolveDir("", ""); err != nil || d != "" {
		t.Errorf("remote flake = %q, %v; want none", d, err)
	}
	if _, err := ResolveDir(filepath.Join(fleetDir, "missing"), fleetDir); err == nil || !strings.Contains(err.Error(), "--secrets-dir") {
		t.Errorf("a missing --secrets-dir gave %v", err)
	}
}

func TestGuard(t *testing.T) {
	ctx := context.Background()
	fleetDir := t.TempDir()
	writeFile(t, filepath.Join(fleetDir, "flake.nix"), "{ outputs = _: { }; }\n")
	writeFile(t, filepath.Join(fleetDir, "secrets", "alpha", "db"), "x")
	if _, _, err := Guard(ctx, fleetDir, ""); err == nil || !strings.Contains(err.Error(), "not a git work tree") {
		t.Fatalf("plain flake with secrets/: %v", err)
	}
	elsewhere := t.TempDir()
	if dir, _, err := Guard(ctx, fleetDir, elsewhere); err != nil || dir != elsewhere {
		t.Fatalf("--secrets-dir outside the flake: %q, %v", dir, err)
	}
	if dir, _, err := Guard(ctx, "github:example/fleet", ""); err != nil || dir != "" {
		t.Fatalf("remote flake: %q, %v", dir, err)
	}
	gitRun(t, fleetDir, "init", "-q")
	writeFile(t, filepath.Join(fleetDir, ".gitignore"), "/secrets/\n")
	gitRun(t, fleetDir, "add", "flake.nix", ".gitignore")
	gitRun(t, fleetDir, "commit", "-q", "-m", "x")
	if dir, note, err := Guard(ctx, fleetDir, ""); err != nil || note != "" || dir != filepath.Join(fleetDir, "secrets") {
		t.Fatalf("git flake with ignored secrets/: %q %q %v", dir, note, err)
	}
	if _, _, err := Guard(ctx, "path:"+fleetDir, ""); err == nil {
		t.Fatal("path: flake with secrets/ inside was accepted")
	}
}
