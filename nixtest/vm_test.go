package nixtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// The NixOS VM tests (nixtest/vm, flake output checks) need nixpkgs and
// KVM and cannot run here. This evaluates them with the stand-ins instead:
// every node evaluates with the real bento modules and no failed
// assertion, the published fleet describes the clients with the same
// bento settings as the VMs, and the test scripts render (and compile,
// when python3 is here).
func TestVMChecksEvaluate(t *testing.T) {
	needNix(t)
	root := repoRoot(t)
	type node struct {
		Failed []string           `json:"failed"`
		Bento  map[string]any     `json:"bento"`
		Server map[string]any     `json:"server"`
		Etc    map[string]*string `json:"etc"`
	}
	var r struct {
		Checks map[string]struct {
			Name   string          `json:"name"`
			Nodes  map[string]node `json:"nodes"`
			Script string          `json:"script"`
		} `json:"checks"`
		Fleet map[string]node `json:"fleet"`
	}
	evalJSON(t, `import `+nixString(filepath.Join(root, "nixtest/testdata/vm.nix"))+` { repo = `+nixString(root)+`; bento = `+nixString(flakeCopy(t))+`; }`, &r)

	want := []string{"vm-activation-rollback", "vm-happy-path", "vm-kernel-reboot", "vm-server-lost-rollback"}
	if got := keys(r.Checks); !reflect.DeepEqual(got, want) {
		t.Fatalf("checks = %v, want %v", got, want)
	}
	if got := keys(r.Fleet); !reflect.DeepEqual(got, []string{"client1", "client2"}) {
		t.Fatalf("the published fleet has %v", got)
	}
	python, _ := exec.LookPath("python3")
	flakeRE := regexp.MustCompile(`cp (/nix/store/[^ ]+-flake\.nix) /srv/fleet/flake\.nix`)
	for name, c := range r.Checks {
		if got := keys(c.Nodes); !reflect.DeepEqual(got, []string{"client1", "client2", "server"}) {
			t.Errorf("%s: nodes %v", name, got)
		}
		for n, nd := range c.Nodes {
			if len(nd.Failed) != 0 {
				t.Errorf("%s: node %s: failed assertions %q", name, n, nd.Failed)
			}
		}
		if c.Nodes["server"].Server == nil || c.Nodes["client1"].Bento == nil || c.Nodes["client2"].Bento == nil {
			t.Errorf("%s: the server or a client does not enable bento", name)
		}
		for _, h := range []string{"client1", "client2"} {
			if !reflect.DeepEqual(c.Nodes[h].Bento, r.Fleet[h].Bento) {
				t.Errorf("%s: %s boots with services.bento\n%v\nbut the fleet publishes\n%v", name, h, c.Nodes[h].Bento, r.Fleet[h].Bento)
			}
		}
		m := flakeRE.FindStringSubmatch(c.Script)
		if m == nil {
			t.Errorf("%s: the script does not install the fleet's flake.nix", name)
		} else if data, err := os.ReadFile(m[1]); err != nil || strings.Contains(string(data), "##") || !strings.Contains(string(data), `nixpkgs.url = "path:`) || !strings.Contains(string(data), `system = "x86_64-linux"`) {
			t.Errorf("%s: the fleet's flake.nix is not filled in (%v):\n%s", name, err, data)
		}
		if python != "" {
			file := filepath.Join(t.TempDir(), name+".py")
			if err := os.WriteFile(file, []byte(c.Script), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runErr(t, "", python, "-m", "py_compile", file); err != nil {
				t.Errorf("%s: the test script is not valid Python: %v\n%s", name, err, out)
			}
		}
	}
	for _, h := range []string{"client1", "client2"} {
		if v := r.Fleet[h].Etc["bento-test"]; v == nil || *v != "1" {
			t.Errorf("the fleet's %s: /etc/bento-test = %v, want version 1", h, v)
		}
	}
}
