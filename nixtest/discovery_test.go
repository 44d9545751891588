package nixtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// bento's discovery (package eval, run by `bento hosts`) reads each host's
// services.bento from configurations built with the real modules: the
// option names are the interface between the two.
func TestDiscoveryReadsTheModule(t *testing.T) {
	needNix(t)
	bin := bentoBinary(t)
	dir := t.TempDir()
	copyTree(t, dir, "modules", "nix/package.nix", "nixtest/testdata")
	flake := `{
  outputs = { self }:
    let
      host = name: modules: import ./nixtest/testdata/eval.nix {
        modules = [ ./modules/default.nix { networking.hostName = name; } ] ++ modules;
      };
      key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOrloAd88chEKEllgZC3uqfDJQoKBAN1o8IKFCsQjlmO";
    in {
      nixosConfigurations = {
        web = host "web" [ { services.bento = {
          enable = true; server = "bento.example.org"; port = 2222; serverHostKey = key;
          tags = [ "web" "eu" ]; operation = "boot"; interval = "hourly"; secrets."tls.key" = { };
        }; } ];
        pi = host "pi" [ { services.bento = {
          enable = true; server = "bento.example.org"; serverHostKey = key; user = "pi-sftp"; mode = "fetch";
        }; } ];
        server = host "server" [ { services.bento-server.enable = true; } ];
      };
    };
}
`
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(t, dir, bin, "hosts", "--json", "--flake", "path:"+dir)
	var got struct {
		Hosts []struct {
			Name    string `json:"host"`
			Managed bool   `json:"managed"`
			Enable  bool   `json:"enable"`
			Options struct {
				User      string   `json:"user"`
				Server    string   `json:"server"`
				Port      int      `json:"port"`
				Mode      string   `json:"mode"`
				Tags      []string `json:"tags"`
				Operation string   `json:"operation"`
				Interval  string   `json:"interval"`
				Secrets   []string `json:"secrets"`
			} `json:"options"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("bento hosts --json: %v\n%s", err, out)
	}
	byName := map[string]int{}
	for i, h := range got.Hosts {
		byName[h.Name] = i
	}
	if len(got.Hosts) != 3 {
		t.Fatalf("bento hosts found %d hosts:\n%s", len(got.Hosts), out)
	}
	web, pi, server := got.Hosts[byName["web"]], got.Hosts[byName["pi"]], got.Hosts[byName["server"]]
	if !web.Managed || !web.Enable || web.Options.User != "web" || web.Options.Server != "bento.example.org" || web.Options.Port != 2222 ||
		web.Options.Mode != "build" || web.Options.Operation != "boot" || web.Options.Interval != "hourly" ||
		!reflect.DeepEqual(web.Options.Tags, []string{"web", "eu"}) || !reflect.DeepEqual(web.Options.Secrets, []string{"tls.key"}) {
		t.Errorf("web: %+v", web)
	}
	if !pi.Enable || pi.Options.User != "pi-sftp" || pi.Options.Mode != "fetch" || pi.Options.Port != 22 {
		t.Errorf("pi: %+v", pi)
	}
	// The server imports both modules and does not enable the client.
	if !server.Managed || server.Enable {
		t.Errorf("server: %+v", server)
	}
}
