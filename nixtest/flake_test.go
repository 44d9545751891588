package nixtest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// Every .nix file of the repository parses (test fixtures under other
// packages' testdata/ directories may be broken on purpose and are skipped).
func TestParseEveryNixFile(t *testing.T) {
	needNix(t)
	root := repoRoot(t)
	var files []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || name == "result" || (name == "testdata" && rel != "nixtest/testdata")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".nix") {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"flake.nix", "modules/client.nix", "modules/server.nix", "nix/package.nix", "templates/fleet/flake.nix", "nixtest/vm/default.nix"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is missing", want)
		}
	}
	for _, f := range files {
		if _, err := runErr(t, root, "nix-instantiate", "--parse", f); err != nil {
			t.Errorf("%s does not parse: %v", f, err)
		}
	}
}

// Nix sees only the tracked files of a git flake: a module, template or
// test file that exists here but was never `git add`ed would be missing
// for every user of the flake while these tests (which copy the working
// tree) pass.
func TestNixFilesAreTracked(t *testing.T) {
	root := repoRoot(t)
	if _, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		t.Skip("not a git checkout")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	out := run(t, root, "git", append([]string{"ls-files", "--others", "--exclude-standard", "--"}, flakePaths...)...)
	if s := strings.TrimSpace(out); s != "" {
		t.Errorf("untracked files that the flake needs (Nix would not see them; git add them):\n%s", s)
	}
}

// nixosModules, templates and lib evaluate offline: they never force the
// nixpkgs input (which is not here), and the lock file matches flake.nix
// (--no-update-lock-file would fail otherwise).
func TestFlakeOutputsWithoutNixpkgs(t *testing.T) {
	needNix(t)
	dir := flakeCopy(t)
	ref := "path:" + dir
	eval := func(attr, apply string, v any) {
		t.Helper()
		out := run(t, dir, "nix", "eval", "--json", "--no-update-lock-file", ref+"#"+attr, "--apply", apply)
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("%s: %v\n%s", attr, err, out)
		}
	}

	var modules map[string][]string
	eval("nixosModules", `ms: builtins.mapAttrs (n: m: map toString (builtins.filter builtins.isPath m.imports)) ms`, &modules)
	want := map[string]string{"client": "modules/client.nix", "server": "modules/server.nix", "default": "modules/default.nix"}
	if len(modules) != len(want) {
		t.Errorf("nixosModules = %v, want %v", keys(modules), keys(want))
	}
	for name, file := range want {
		if imp := modules[name]; len(imp) != 1 || !strings.HasSuffix(imp[0], "/"+file) {
			t.Errorf("nixosModules.%s imports %v, want [.../%s]", name, imp, file)
		}
	}

	var templates map[string]struct {
		Description string `json:"description"`
		Path        string `json:"path"`
		Welcome     string `json:"welcomeText"`
	}
	eval("templates", `ts: builtins.mapAttrs (n: t: { inherit (t) description welcomeText; path = toString t.path; }) ts`, &templates)
	for _, name := range []string{"default", "fleet"} {
		tpl, ok := templates[name]
		if !ok {
			t.Errorf("templates.%s is missing", name)
			continue
		}
		if tpl.Description == "" || !strings.HasSuffix(tpl.Path, "/templates/fleet") || !strings.Contains(tpl.Welcome, "README.md") {
			t.Errorf("templates.%s = %+v", name, tpl)
		}
	}

	// lib.hostsFromNixosConfigurations on NixOS-shaped configurations.
	var hosts map[string]struct {
		User       string   `json:"user"`
		PublicKeys []string `json:"publicKeys"`
	}
	eval("lib", `lib: lib.hostsFromNixosConfigurations {
	  web-1.config.services.bento = { enable = true; user = "web-1"; hostPublicKey = "ssh-ed25519 AAAAC3 web-1"; };
	  pi.config.services.bento = { enable = true; user = "pi-sftp"; hostPublicKey = null; };
	  off.config.services.bento = { enable = false; user = "off"; };
	  server.config = { networking.hostName = "server"; };
	}`, &hosts)
	if len(hosts) != 2 || hosts["web-1"].User != "web-1" || !reflect.DeepEqual(hosts["web-1"].PublicKeys, []string{"ssh-ed25519 AAAAC3 web-1"}) ||
		hosts["pi"].User != "pi-sftp" || len(hosts["pi"].PublicKeys) != 0 {
		t.Errorf("hostsFromNixosConfigurations = %+v", hosts)
	}
	if out, err := runErr(t, dir, "nix", "eval", "--json", "--no-update-lock-file", ref+"#lib", "--apply",
		`lib: lib.hostsFromNixosConfigurations { "../etc".config.services.bento = { enable = true; user = "x"; }; }`); err == nil ||
		!strings.Contains(err.Error(), "../etc") || !strings.Contains(err.Error(), "rename") {
		t.Errorf("a host name that is a path was accepted or badly explained: %s %v", out, err)
	}
	var alias map[string]any
	eval("lib", `lib: lib.bentoHostsFromFleet { a.config.services.bento = { enable = true; user = "a"; }; }`, &alias)
	if _, ok := alias["a"]; !ok || len(alias) != 1 {
		t.Errorf("lib.bentoHostsFromFleet = %v", alias)
	}
}

// flake.lock pins nixpkgs exactly, in Nix's lock format version 7.
func TestFlakeLock(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "flake.lock"))
	if err != nil {
		t.Fatal(err)
	}
	var lock struct {
		Version int    `json:"version"`
		Root    string `json:"root"`
		Nodes   map[string]struct {
			Inputs   map[string]string `json:"inputs"`
			Locked   map[string]any    `json:"locked"`
			Original map[string]any    `json:"original"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal(data, &lock); err != nil {
		t.Fatal(err)
	}
	if lock.Version != 7 || lock.Root != "root" || lock.Nodes["root"].Inputs["nixpkgs"] != "nixpkgs" {
		t.Errorf("lock header: version %d, root %q, root inputs %v", lock.Version, lock.Root, lock.Nodes["root"].Inputs)
	}
	n := lock.Nodes["nixpkgs"]
	wantLocked := map[string]any{
		"type": "github", "owner": "NixOS", "repo": "nixpkgs",
		"rev":          "8fd9daa3db09ced9700431c5b7ad0e8ba199b575",
		"lastModified": float64(1778430510),
		"narHash":      "sha256-Ti+ZBvW6yrWWAg2szExVTwCd4qOJ3KlVr1tFHfyfi8Q=",
	}
	wantOriginal := map[string]any{"type": "github", "owner": "NixOS", "repo": "nixpkgs", "ref": "nixos-25.11"}
	if !reflect.DeepEqual(n.Locked, wantLocked) {
		t.Errorf("nixpkgs locked = %v, want %v", n.Locked, wantLocked)
	}
	if !reflect.DeepEqual(n.Original, wantOriginal) {
		t.Errorf("nixpkgs original = %v, want %v", n.Original, wantOriginal)
	}
}

// `nix flake init -t <bento>` in an empty directory writes the fleet skeleton.
func TestFlakeInitTemplate(t *testing.T) {
	needNix(t)
	src := flakeCopy(t)
	for _, tpl := range []string{"", "#fleet"} {
		dir := t.TempDir()
		run(t, dir, "nix", "flake", "init", "-t", "path:"+src+tpl)
		got := listFiles(t, dir)
		want := templateFiles(t)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("flake init -t %s wrote %v, want %v", tpl, got, want)
		}
		for _, f := range got {
			if strings.HasSuffix(f, ".nix") {
				run(t, dir, "nix-instantiate", "--parse", f)
			}
		}
	}
}

// templateFiles is what the template directory holds, and must hold.
func templateFiles(t testing.TB) []string {
	files := listFiles(t, filepath.Join(repoRoot(t), "templates/fleet"))
	for _, want := range []string{"flake.nix", "README.md", "common.nix", "hosts/server/configuration.nix", "hosts/web/configuration.nix", "hosts/pi/configuration.nix"} {
		if !slices.Contains(files, want) {
			t.Errorf("templates/fleet/%s is missing", want)
		}
	}
	return files
}

func listFiles(t testing.TB, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, path)
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Through the flake, services.bento.package and services.bento-server.package
// default to the flake's own build (not one with the host's nixpkgs, which
// may lack Go 1.26); a system the flake does not build, and the modules
// imported without the flake, keep pkgs.callPackage. The flake's nixpkgs
// input is a stand-in whose callPackage names what it builds; packages and
// apps are published for Linux only.
func TestFlakeModulesDefaultToTheFlakesPackage(t *testing.T) {
	needNix(t)
	dir := flakeCopy(t)
	stub := t.TempDir()
	copyTree(t, stub, "nixtest/testdata/pkgs.nix")
	if err := os.WriteFile(filepath.Join(stub, "flake.nix"), []byte(`{
  outputs = _: {
    legacyPackages = {
      x86_64-linux = import ./nixtest/testdata/pkgs.nix;
      aarch64-linux = import ./nixtest/testdata/pkgs.nix;
    };
  };
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	eval := func(attr, apply string, v any) {
		t.Helper()
		out := run(t, dir, "nix", "eval", "--json", "--impure", "--override-input", "nixpkgs", "path:"+stub, "path:"+dir+"#"+attr, "--apply", apply)
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("%s: %v\n%s", attr, err, out)
		}
	}
	evalNix := nixString(filepath.Join(repoRoot(t), "nixtest/testdata/eval.nix"))
	pkgsNix := nixString(filepath.Join(repoRoot(t), "nixtest/testdata/pkgs.nix"))
	var got map[string]string
	eval("nixosModules", `ms: let
	  ev = m: system: (import `+evalNix+` {
	    modules = if builtins.isList m then m else [ m ];
	    pkgs = let p = import `+pkgsNix+`; in p // { stdenv = p.stdenv // { hostPlatform.system = system; }; };
	  }).config.services;
	  withoutFlake = (import `+evalNix+` { modules = [ `+nixString(filepath.Join(repoRoot(t), "modules/default.nix"))+` ]; }).config.services;
	in {
	  client = (ev ms.client "x86_64-linux").bento.package.outPath;
	  server = (ev ms.server "aarch64-linux").bento-server.package.outPath;
	  defaultClient = (ev ms.default "x86_64-linux").bento.package.outPath;
	  defaultServer = (ev ms.default "x86_64-linux").bento-server.package.outPath;
	  otherSystem = (ev ms.client "riscv64-linux").bento.package.outPath;
	  # Imported more than once: still one definition.
	  all = (ev [ ms.client ms.server ms.default ] "x86_64-linux").bento.package.outPath;
	  withoutFlake = withoutFlake.bento.package.outPath;
	}`, &got)
	flakes := "/nix/store/00000000000000000000000000000000-bento-0.1.0+dirty"
	own := "/nix/store/00000000000000000000000000000000-bento"
	want := map[string]string{"client": flakes, "server": flakes, "defaultClient": flakes, "defaultServer": flakes, "otherSystem": own, "withoutFlake": own, "all": flakes}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("packages: %v\nwant %v", got, want)
	}

	var systems map[string][]string
	eval("packages", `ps: { packages = builtins.attrNames ps; }`, &systems)
	var apps map[string][]string
	eval("apps", `as: { apps = builtins.attrNames as; }`, &apps)
	linux := []string{"aarch64-linux", "x86_64-linux"}
	if !reflect.DeepEqual(systems["packages"], linux) || !reflect.DeepEqual(apps["apps"], linux) {
		t.Errorf("packages for %v, apps for %v; want Linux only (%v): bento does not build elsewhere", systems["packages"], apps["apps"], linux)
	}
	pkg, err := os.ReadFile(filepath.Join(repoRoot(t), "nix/package.nix"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pkg), "platforms = lib.platforms.linux;") {
		t.Errorf("nix/package.nix: meta.platforms must be lib.platforms.linux (GOOS=darwin does not build)")
	}
}
