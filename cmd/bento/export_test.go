package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bento-nix/bento/manifest"
)

// exportChroot writes a chroot root with host alpha's publication: one
// object, the given secrets (name → content), signed with key when set.
func exportChroot(t *testing.T, key *manifest.SigningKey, secretFiles map[string]string) (root string, m manifest.Manifest) {
	t.Helper()
	root = t.TempDir()
	host := filepath.Join(root, "alpha")
	put := func(rel, content string) manifest.File {
		p := filepath.Join(host, filepath.FromSlash(rel))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o444); err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256([]byte(content))
		return manifest.File{Size: int64(len(content)), SHA256: hex.EncodeToString(s[:]), Mode: 0o444}
	}
	m = manifest.Manifest{Format: 2, Host: "alpha", Version: "0123456789abcdef", Sequence: 5, PublishedAt: time.Now().UTC(),
		Flake: manifest.Flake{Attr: "nixosConfigurations.alpha"}}
	content := "{ }\n"
	s := sha256.Sum256([]byte(content))
	f := put(manifest.ObjectPath(hex.EncodeToString(s[:])), content)
	f.Path = "flake.nix"
	m.Files = []manifest.File{f}
	for name, c := range secretFiles {
		sf := put(manifest.SecretsDir+"/"+m.Version+"/"+name, c)
		sf.Path = name
		m.Secrets = append(m.Secrets, sf)
	}
	data, _ := json.Marshal(m)
	data = append(data, '\n')
	if key != nil {
		var err error
		if data, err = manifest.Sign(data, *key); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(host, manifest.ManifestFile), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return root, m
}

func TestExportRefuses(t *testing.T) {
	k, err := manifest.GenerateSigningKey("fleet-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		key     *manifest.SigningKey
		secrets map[string]string
		damage  func(root string, m manifest.Manifest)
		args    []string
		code    int
		want    string
	}{
		{"signed, age secret", &k, map[string]string{"db.age": "age-encryption.org/v1…"}, nil, nil, 0, "alpha: bundle"},
		{"unsigned", nil, nil, nil, nil, 1, "not signed"},
		{"unsigned, allowed", nil, nil, nil, []string{"--allow-unsigned"}, 0, "alpha: bundle"},
		{"plain secret", &k, map[string]string{"token": "hunter2"}, nil, nil, 1, "token are not age-encrypted"},
		{"plain secret, allowed", &k, map[string]string{"token": "hunter2"}, nil, []string{"--include-plain-secrets"}, 0, "1 secrets"},
		{"damaged object", &k, nil, func(root string, m manifest.Manifest) {
			p := filepath.Join(root, "alpha", filepath.FromSlash(m.RemotePath(m.Files[0])))
			os.Remove(p)
			os.WriteFile(p, []byte("{ x }\n"), 0o444)
		}, nil, 1, "does not have the content"},
		{"unknown host", &k, nil, func(root string, _ manifest.Manifest) { os.RemoveAll(filepath.Join(root, "alpha")) }, nil, 1, "no chroot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, m := exportChroot(t, tc.key, tc.secrets)
			if tc.damage != nil {
				tc.damage(root, m)
			}
			out := t.TempDir()
			stdout, stderr, code := runCLI(t, append([]string{"export", "alpha", "--chroot-root", root, "--output", out}, tc.args...)...)
			if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
				t.Fatalf("exit %d, output %q; want exit %d and %q", code, stdout+stderr, tc.code, tc.want)
			}
			_, err := os.Stat(filepath.Join(out, "alpha", manifest.ManifestFile))
			if (code == 0) != (err == nil) {
				t.Fatalf("exit %d, bundle manifest: %v", code, err)
			}
			if leftovers, _ := filepath.Glob(filepath.Join(out, ".alpha.tmp-*")); len(leftovers) != 0 {
				t.Errorf("a failed export left %v", leftovers)
			}
		})
	}
}

func TestImportReportsRefusesWhatAHostMayNotWrite(t *testing.T) {
	k, _ := manifest.GenerateSigningKey("fleet-1")
	root, m := exportChroot(t, &k, nil)
	out := t.TempDir()
	if _, stderr, code := runCLI(t, "export", "alpha", "--chroot-root", root, "--output", out); code != 0 {
		t.Fatal(stderr)
	}
	bundle := filepath.Join(out, "alpha")
	os.MkdirAll(filepath.Join(bundle, manifest.LogsDir), 0o755)
	os.MkdirAll(filepath.Join(root, "alpha", manifest.ReportsDir), 0o755)
	report := func(mod func(r *manifest.Report)) {
		r := manifest.Report{Format: 1, Host: "alpha", SeenVersion: m.Version, AttemptedVersion: m.Version, AppliedVersion: m.Version,
			Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, StartedAt: time.Now().UTC(), FinishedAt: time.Now().UTC()}
		if mod != nil {
			mod(&r)
		}
		data, _ := json.Marshal(r)
		p := filepath.Join(bundle, manifest.StatusFile)
		os.Remove(p)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	outside := filepath.Join(t.TempDir(), "outside.log.gz")
	os.WriteFile(outside, []byte("not the host's"), 0o644)
	for _, tc := range []struct {
		name  string
		setup func()
		code  int
		want  string
	}{
		{"another host's report", func() { report(func(r *manifest.Report) { r.Host = "beta" }) }, 1, `for host "beta"`},
		{"an unsafe log name", func() { report(func(r *manifest.Report) { r.Log = "../../etc/x.log.gz" }) }, 1, "unsafe log"},
		{"a log that leads out of the bundle", func() {
			report(func(r *manifest.Report) { r.Log = "a.log.gz" })
			os.Symlink(outside, filepath.Join(bundle, manifest.LogsDir, "a.log.gz"))
		}, 1, "log"},
		{"a status.json over the limit", func() {
			os.WriteFile(filepath.Join(bundle, manifest.StatusFile), []byte(`{"host":"alpha","error":"`+strings.Repeat("x", 2<<20)+`"}`), 0o644)
		}, 1, "alpha"},
		{"a good report", func() { report(nil) }, 0, "alpha: imported"},
		{"an older one after it", func() { report(func(r *manifest.Report) { r.FinishedAt = time.Now().Add(-time.Hour) }) }, 0, "newer one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			stdout, stderr, code := runCLI(t, "import-reports", "--chroot-root", root, bundle)
			if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
				t.Fatalf("exit %d, output %q; want exit %d and %q", code, stdout+stderr, tc.code, tc.want)
			}
			// The refusals come before the first import: nothing of them
			// may be in the chroot.
			if _, err := os.Stat(filepath.Join(root, "alpha", manifest.StatusFile)); tc.code != 0 && err == nil {
				t.Fatal("a refused report reached the chroot")
			}
		})
	}
	keyFile := filepath.Join(t.TempDir(), "publication-key.sec")
	if err := os.WriteFile(keyFile, []byte(k.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("a bundle manifest the server did not publish for that host", func(t *testing.T) {
		// alpha's host rewrites its bundle to report for beta.
		forged := filepath.Join(t.TempDir(), "beta")
		if err := exec.Command("cp", "-a", bundle, forged).Run(); err != nil {
			t.Fatal(err)
		}
		fm := m
		fm.Host = "beta"
		fdata, _ := json.Marshal(fm)
		os.WriteFile(filepath.Join(forged, manifest.ManifestFile), fdata, 0o644)
		r := manifest.Report{Format: 1, Host: "beta", SeenVersion: m.Version, AttemptedVersion: m.Version, AppliedVersion: m.Version,
			Stage: manifest.StageConfirmed, Result: manifest.ResultSuccess, StartedAt: time.Now().UTC(), FinishedAt: time.Now().UTC()}
		rdata, _ := json.Marshal(r)
		os.Remove(filepath.Join(forged, manifest.StatusFile))
		os.WriteFile(filepath.Join(forged, manifest.StatusFile), rdata, 0o644)
		os.MkdirAll(filepath.Join(root, "beta", manifest.ReportsDir), 0o755)
		os.WriteFile(filepath.Join(root, "beta", manifest.ManifestFile), []byte(`{"host":"beta"}`), 0o644)
		for _, args := range [][]string{{}, {"--publication-key", keyFile}} {
			stdout, stderr, code := runCLI(t, append([]string{"import-reports", "--chroot-root", root, forged}, args...)...)
			if code != 1 || !strings.Contains(stderr, "the bundle's manifest is not") {
				t.Fatalf("import-reports %v of a forged bundle: exit %d\n%s%s", args, code, stdout, stderr)
			}
			if _, err := os.Stat(filepath.Join(root, "beta", manifest.StatusFile)); err == nil {
				t.Fatal("a host's bundle wrote another host's report")
			}
		}
	})
	t.Run("the host deployed again since the export", func(t *testing.T) {
		live := filepath.Join(root, "alpha", manifest.ManifestFile)
		before, _ := os.ReadFile(live)
		defer os.WriteFile(live, before, 0o644)
		os.WriteFile(live, append(before, ' '), 0o644)
		report(func(r *manifest.Report) { r.FinishedAt = time.Now().Add(time.Minute) })
		if _, stderr, code := runCLI(t, "import-reports", "--chroot-root", root, bundle); code != 1 || !strings.Contains(stderr, "--publication-key") {
			t.Fatalf("without the key: exit %d, %s", code, stderr)
		}
		if stdout, stderr, code := runCLI(t, "import-reports", "--chroot-root", root, "--publication-key", keyFile, bundle); code != 0 || !strings.Contains(stdout, "alpha: imported") {
			t.Fatalf("with the key that signed the bundle: exit %d, %s%s", code, stdout, stderr)
		}
	})
	var got manifest.Report
	data, err := os.ReadFile(filepath.Join(root, "alpha", manifest.StatusFile))
	if err != nil || json.Unmarshal(data, &got) != nil || got.FinishedAt.Before(time.Now().Add(-time.Minute)) {
		t.Fatalf("the chroot's report after the import: %s, %v", data, err)
	}
}
