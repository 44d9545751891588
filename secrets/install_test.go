package secrets

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

// stage writes a version's secrets as the Store would hold them.
func stage(t *testing.T, secrets map[string]string) (string, []manifest.File) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range secrets {
		writeFile(t, filepath.Join(dir, "alpha", name), content)
	}
	files, err := Collect(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "alpha"), files
}

func randomSecret(t *testing.T) string {
	b := make([]byte, 16)
	rand.Read(b)
	return "bento-test-secret-" + hex.EncodeToString(b)
}

// recorder is a real restart command that appends each unit to a file.
func recorder(t *testing.T) (Command, func() []string) {
	rec := filepath.Join(t.TempDir(), "restarts")
	cmd := Command{"/bin/sh", "-c", `echo "$0" >> "` + rec + `"`}
	return cmd, func() []string {
		data, _ := os.ReadFile(rec)
		os.Remove(rec)
		return strings.Fields(string(data))
	}
}

type fileWant struct {
	content  string
	mode     os.FileMode
	uid, gid int
}

func checkInstalled(t *testing.T, p string, w fileWant) {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("secret not installed: %v", err)
	}
	if string(data) != w.content {
		t.Errorf("%s holds the wrong content", p)
	}
	fi, _ := os.Lstat(p)
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode() != w.mode || int(st.Uid) != w.uid || int(st.Gid) != w.gid {
		t.Errorf("%s: %v %d:%d, want %v %d:%d", p, fi.Mode(), st.Uid, st.Gid, w.mode, w.uid, w.gid)
	}
}

func TestInstallLifecycle(t *testing.T) {
	ctx := context.Background()
	target := t.TempDir()
	var logs bytes.Buffer
	restart, restarted := recorder(t)
	inst := &Installer{Restarter: restart, Log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	dbPass, apiToken, dbPass2, orphan := randomSecret(t), randomSecret(t), randomSecret(t), randomSecret(t)
	specs := map[string]Spec{
		"db":     {Path: filepath.Join(target, "db", "password"), Owner: "nobody", Group: "nogroup", Mode: "0440", RestartUnits: []string{"postgresql.service"}},
		"api":    {Path: filepath.Join(target, "api"), RestartUnits: []string{"api.service", "postgresql.service"}},
		"orphan": {Path: filepath.Join(target, "orphan"), Owner: "no-such-user-bento"},
	}
	var reported []string

	// First publication: db and api install; orphan's owner is unknown.
	dir, files := stage(t, map[string]string{"db": dbPass, "api": apiToken, "orphan": orphan})
	o, err := inst.Install(ctx, dir, files, specs, State{})
	if err != nil {
		t.Fatal(err)
	}
	inst.Restart(ctx, &o)
	checkInstalled(t, specs["db"].Path, fileWant{dbPass, 0o440, 65534, 65534})
	checkInstalled(t, specs["api"].Path, fileWant{apiToken, 0o400, 0, 0})
	if _, err := os.Lstat(specs["orphan"].Path); err == nil {
		t.Error("the secret with an unknown owner was installed")
	}
	if msg := o.Errors["orphan"]; !strings.Contains(msg, `owner "no-such-user-bento": no such user`) {
		t.Errorf("orphan's error = %q", msg)
	}
	if len(o.Errors) != 1 {
		t.Errorf("errors = %v, want only orphan's", o.Errors)
	}
	if got := restarted(); !slices.Equal(got, []string{"api.service", "postgresql.service"}) {
		t.Errorf("restarted %v after the first install", got)
	}
	reported = append(reported, errorsText(o))

	// Same version again: nothing is written, nothing restarted.
	o, err = inst.Install(ctx, dir, files, specs, o.State)
	if err != nil {
		t.Fatal(err)
	}
	inst.Restart(ctx, &o)
	if len(o.Changed) != 0 || len(o.Units) != 0 {
		t.Errorf("an unchanged publication changed %v and restarted %v", o.Changed, o.Units)
	}
	if got := restarted(); len(got) != 0 {
		t.Errorf("restarted %v for nothing", got)
	}
	reported = append(reported, errorsText(o))

	// db changes, orphan is no longer published: only db's unit restarts.
	dir, files = stage(t, map[string]string{"db": dbPass2, "api": apiToken})
	o, err = inst.Install(ctx, dir, files, specs, o.State)
	if err != nil {
		t.Fatal(err)
	}
	inst.Restart(ctx, &o)
	checkInstalled(t, specs["db"].Path, fileWant{dbPass2, 0o440, 65534, 65534})
	if !slices.Equal(o.Changed, []string{"db"}) {
		t.Errorf("changed = %v, want [db]", o.Changed)
	}
	if got := restarted(); !slices.Equal(got, []string{"postgresql.service"}) {
		t.Errorf("restarted %v after db changed, want postgresql.service", got)
	}
	// orphan is still declared but no longer published: said so.
	if msg := o.Errors["orphan"]; len(o.Errors) != 1 || !strings.Contains(msg, "the server publishes no such secret") {
		t.Errorf("errors = %v, want only orphan's, saying it is not published", o.Errors)
	}
	delete(specs, "orphan")

	// A reboot empties /run: the next tick puts the secret back.
	os.Remove(specs["api"].Path)
	o, err = inst.Install(ctx, dir, files, specs, o.State)
	if err != nil {
		t.Fatal(err)
	}
	checkInstalled(t, specs["api"].Path, fileWant{apiToken, 0o400, 0, 0})
	if !slices.Equal(o.Changed, []string{"api"}) {
		t.Errorf("changed = %v after api's file vanished, want [api]", o.Changed)
	}

	// api moves; db is removed from the server.
	moved := specs["api"]
	moved.Path = filepath.Join(target, "moved", "api")
	specs["api"] = moved
	oldAPI := filepath.Join(target, "api")
	dir, files = stage(t, map[string]string{"api": apiToken})
	o, err = inst.Install(ctx, dir, files, specs, o.State)
	if err != nil {
		t.Fatal(err)
	}
	checkInstalled(t, moved.Path, fileWant{apiToken, 0o400, 0, 0})
	for _, gone := range []string{oldAPI, specs["db"].Path} {
		if _, err := os.Lstat(gone); err == nil {
			t.Errorf("%s is still there", gone)
		}
	}
	if !slices.Equal(o.Removed, []string{"db"}) {
		t.Errorf("removed = %v, want [db]", o.Removed)
	}
	if _, ok := o.State["db"]; ok {
		t.Error("db is still in the state after its removal")
	}
	reported = append(reported, errorsText(o))

	for _, s := range []string{dbPass, dbPass2, apiToken, orphan} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("the log holds a secret's content:\n%s", logs.String())
		}
		if strings.Contains(strings.Join(reported, "\n"), s) {
			t.Errorf("an error holds a secret's content")
		}
	}
	if !strings.Contains(logs.String(), "secret installed") {
		t.Errorf("nothing was logged:\n%s", logs.String())
	}
}

func errorsText(o Outcome) string {
	var b strings.Builder
	for k, v := range o.Errors {
		b.WriteString(k + ": " + v + "\n")
	}
	return b.String()
}

func TestInstallRefusesBadSpecs(t *testing.T) {
	target := t.TempDir()
	tests := []struct {
		name    string
		spec    Spec
		missing bool
		wantErr string
	}{
		{name: "no option declared", missing: true, wantErr: "declares no services.bento.secrets.k"},
		{name: "relative path", spec: Spec{Path: "run/k"}, wantErr: "must be an absolute, clean file path"},
		{name: "unclean path", spec: Spec{Path: target + "/../k"}, wantErr: "must be an absolute, clean file path"},
		{name: "empty path", spec: Spec{}, wantErr: "path is empty"},
		{name: "in the Nix store", spec: Spec{Path: "/nix/store/k"}, wantErr: "is in the Nix store"},
		{name: "not octal", spec: Spec{Path: filepath.Join(target, "k"), Mode: "0999"}, wantErr: "not an octal permission"},
		{name: "setuid", spec: Spec{Path: filepath.Join(target, "k"), Mode: "4755"}, wantErr: "not an octal permission"},
		{name: "unknown group", spec: Spec{Path: filepath.Join(target, "k"), Group: "no-such-group-bento"}, wantErr: `group "no-such-group-bento": no such group`},
		{name: "a directory is in the way", spec: Spec{Path: target}, wantErr: "is a directory"},
	}
	content := randomSecret(t)
	dir, files := stage(t, map[string]string{"k": content})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specs := map[string]Spec{"k": tt.spec}
			if tt.missing {
				specs = nil
			}
			o, err := (&Installer{}).Install(context.Background(), dir, files, specs, State{})
			if err != nil {
				t.Fatal(err)
			}
			msg := o.Errors["k"]
			if !strings.Contains(msg, tt.wantErr) {
				t.Fatalf("error = %q, want one containing %q", msg, tt.wantErr)
			}
			if strings.Contains(msg, content) || strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line without content: %q", msg)
			}
			if len(o.State) != 0 || len(o.Changed) != 0 {
				t.Fatalf("a refused secret counts as installed: %+v", o)
			}
		})
	}
}

func TestInstallRestartFailureIsReported(t *testing.T) {
	dir, files := stage(t, map[string]string{"k": randomSecret(t)})
	inst := &Installer{Restarter: Command{"/bin/sh", "-c", `echo "Unit $0 not found." >&2; exit 5`}}
	specs := map[string]Spec{"k": {Path: filepath.Join(t.TempDir(), "k"), RestartUnits: []string{"web.service"}}}
	o, err := inst.Install(context.Background(), dir, files, specs, State{})
	if err != nil {
		t.Fatal(err)
	}
	inst.Restart(context.Background(), &o)
	if msg := o.Errors["k"]; !strings.Contains(msg, "installed, but restarting web.service failed") || !strings.Contains(msg, "Unit web.service not found") {
		t.Fatalf("error = %q", msg)
	}
	if _, ok := o.State["k"]; !ok {
		t.Fatal("the installed secret is missing from the state")
	}
}

func TestInstallRefusesTamperedStagedCopy(t *testing.T) {
	dir, files := stage(t, map[string]string{"k": "published"})
	writeFile(t, filepath.Join(dir, "k"), "tampered!")
	p := filepath.Join(t.TempDir(), "k")
	o, err := (&Installer{}).Install(context.Background(), dir, files, map[string]Spec{"k": {Path: p}}, State{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(o.Errors["k"], "differs from the manifest") {
		t.Fatalf("error = %q", o.Errors["k"])
	}
	if _, err := os.Lstat(p); err == nil {
		t.Fatal("a tampered secret was installed")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".*")); len(leftovers) > 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
}

func TestStateRoundTrip(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secrets.json")
	st, _, err := LoadState(file)
	if err != nil || len(st) != 0 {
		t.Fatalf("missing state = %v, %v", st, err)
	}
	want := State{"k": {Path: "/run/bento-secrets/k", Owner: "root", Group: "root", Mode: "0400", Published: strings.Repeat("a", 64), Content: strings.Repeat("b", 64)}}
	if err := want.Save(file); err != nil {
		t.Fatal(err)
	}
	got, note, err := LoadState(file)
	if err != nil || got["k"] != want["k"] || note != "" {
		t.Fatalf("LoadState = %v, %q, %v", got, note, err)
	}
}

// A damaged state file is moved aside and the state starts empty (every
// secret installed again), with a note for the report; it is never read
// without a bound.
func TestDamagedStateIsMovedAside(t *testing.T) {
	cases := []struct {
		name string
		make func(file string) error
	}{
		{"not JSON", func(f string) error { return os.WriteFile(f, []byte("{"), 0o600) }},
		{"null", func(f string) error { return os.WriteFile(f, []byte("null"), 0o600) }},
		{"symlink to /dev/zero", func(f string) error { return os.Symlink("/dev/zero", f) }},
		{"too large", func(f string) error { return os.WriteFile(f, bytes.Repeat([]byte(" "), maxStateFile+1), 0o600) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "installed.json")
			if err := tc.make(file); err != nil {
				t.Fatal(err)
			}
			st, note, err := LoadState(file)
			if err != nil || st == nil || len(st) != 0 {
				t.Fatalf("LoadState = %v, %v; want an empty state", st, err)
			}
			if tc.name == "null" {
				if note != "" {
					t.Errorf("null is an empty state, not damage: note %q", note)
				}
				return
			}
			aside, _ := filepath.Glob(file + ".corrupt-*")
			if len(aside) != 1 || !strings.Contains(note, "moved aside to "+aside[0]) {
				t.Errorf("note %q, moved aside %q", note, aside)
			}
			if _, err := os.Lstat(file); !os.IsNotExist(err) {
				t.Errorf("%s is still there: %v", file, err)
			}
		})
	}
}

// TestInstallAge decrypts with the real age CLI and an SSH host key, as a
// host does with /etc/ssh/ssh_host_ed25519_key.
func TestInstallAge(t *testing.T) {
	if _, err := exec.LookPath("age"); err != nil {
		t.Fatal("age is not installed (apt-get install age): .age secrets cannot be tested")
	}
	keys := t.TempDir()
	key := filepath.Join(keys, "ssh_host_ed25519_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	other := filepath.Join(keys, "other_key")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	plain := randomSecret(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "plain"), plain)
	dir := filepath.Join(t.TempDir(), "alpha")
	os.MkdirAll(dir, 0o700)
	enc := exec.Command("age", "-R", key+".pub", "-o", filepath.Join(dir, "db.age"), filepath.Join(src, "plain"))
	if out, err := enc.CombinedOutput(); err != nil {
		t.Fatalf("age -e: %v: %s", err, out)
	}
	files, err := Collect(filepath.Dir(dir), "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files[0].Path != "db.age" {
		t.Fatalf("files = %+v", files)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "db.age")); bytes.Contains(data, []byte(plain)) {
		t.Fatal("the published .age file holds the plaintext")
	}
	target := filepath.Join(t.TempDir(), "db")
	specs := map[string]Spec{"db": {Path: target, Owner: "nobody", Mode: "0400"}}

	o, err := (&Installer{AgeIdentity: other}).Install(context.Background(), dir, files, specs, State{})
	if err != nil {
		t.Fatal(err)
	}
	if msg := o.Errors["db"]; !strings.Contains(msg, "age -d") || strings.Contains(msg, plain) {
		t.Fatalf("decrypting with the wrong key: error = %q", msg)
	}
	if _, err := os.Lstat(target); err == nil {
		t.Fatal("a secret that did not decrypt was installed")
	}

	o, err = (&Installer{AgeIdentity: key}).Install(context.Background(), dir, files, specs, State{})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Errors) != 0 {
		t.Fatalf("errors = %v", o.Errors)
	}
	checkInstalled(t, target, fileWant{plain, 0o400, 65534, 65534})
	// The installed file is plaintext; unchanged ciphertext is not
	// decrypted again.
	o, err = (&Installer{AgeIdentity: key}).Install(context.Background(), dir, files, specs, o.State)
	if err != nil || len(o.Changed) != 0 {
		t.Fatalf("second install changed %v (%v)", o.Changed, err)
	}
}
