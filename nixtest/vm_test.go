package nixtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
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

// vm-server-lost-rollback cuts client1 off from the server: every address
// /etc/hosts gives "server", IPv6 included (the test driver writes both,
// and Go's dialer falls back from one family to the other), and the
// rollback (stopping the unit) puts them all back. The unit's script runs
// here with a stand-in `ip` that records its arguments and a hosts file as
// the NixOS test driver writes it.
func TestVMServerCutCoversIPv6(t *testing.T) {
	needNix(t)
	root := repoRoot(t)
	var unit struct {
		Script  string `json:"script"`
		PreStop string `json:"preStop"`
	}
	evalJSON(t, `let
	  p = import `+nixString(filepath.Join(root, "nixtest/testdata/pkgs.nix"))+`;
	  r = import `+nixString(filepath.Join(root, "nixtest/testdata/eval.nix"))+` {
	    freeform = true;
	    pkgs = p // { iproute2 = p.coreutils; gawk = p.coreutils; };
	    modules = [
	      `+nixString(filepath.Join(root, "nixtest/vm/fleet/common.nix"))+`
	      { networking.hostName = "client1"; bentoTest = { version = 2; scenario = "server-lost-rollback"; }; }
	    ];
	  };
	in { inherit (r.config.systemd.services.bento-test-cut) script preStop; }`, &unit)

	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n::1 localhost\n192.168.1.1 client1\n2001:db8:1::1 client1\n192.168.1.3 server\n2001:db8:1::3 server\n192.168.1.3 server.local server\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	calls := filepath.Join(dir, "calls")
	if err := os.WriteFile(filepath.Join(bin, "ip"), []byte("#!/bin/sh\necho \"$*\" >> "+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		script, op string
	}{{unit.Script, "add"}, {unit.PreStop, "del"}} {
		os.Remove(calls)
		script := strings.ReplaceAll(tc.script, "/etc/hosts", hosts)
		cmd := exec.Command("/bin/sh", "-ec", script)
		cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s\n%s", tc.op, err, out, script)
		}
		data, _ := os.ReadFile(calls)
		want := "route " + tc.op + " blackhole 192.168.1.3/32\n-6 route " + tc.op + " blackhole 2001:db8:1::3/128\n"
		if got := string(data); !sameLines(got, want) {
			t.Errorf("%s: ip was run as\n%s\nwant\n%s", tc.op, got, want)
		}
	}
}

func sameLines(a, b string) bool {
	x, y := strings.Split(strings.TrimSpace(a), "\n"), strings.Split(strings.TrimSpace(b), "\n")
	sort.Strings(x)
	sort.Strings(y)
	return reflect.DeepEqual(x, y)
}
