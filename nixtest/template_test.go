package nixtest

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

type templateHost struct {
	Bento struct {
		Enable        bool     `json:"enable"`
		Server        *string  `json:"server"`
		Mode          string   `json:"mode"`
		User          string   `json:"user"`
		Tags          []string `json:"tags"`
		HostPublicKey *string  `json:"hostPublicKey"`
		Substituters  []string `json:"substituters"`
	} `json:"bento"`
	NixServe    bool `json:"nixServe"`
	ServerHosts map[string]struct {
		User       string   `json:"user"`
		PublicKeys []string `json:"publicKeys"`
	} `json:"serverHosts"`
	Failed   []string `json:"failed"`
	Warnings []string `json:"warnings"`
	Users    []string `json:"users"`
	Units    []string `json:"units"`
}

// evalTemplate evaluates every host of the fleet template (as `nix flake
// init` writes it) with the stand-ins, fill added to each host.
func evalTemplate(t *testing.T, fill string) map[string]templateHost {
	t.Helper()
	root := repoRoot(t)
	bento := flakeCopy(t)
	tpl := t.TempDir()
	run(t, tpl, "nix", "flake", "init", "-t", "path:"+bento)
	expr := fmt.Sprintf(`let
  f = import %s { template = %s; bento = %s; fill = %s; };
in builtins.mapAttrs (name: h: let c = h.config; in {
  bento = { inherit (c.services.bento) enable server mode user tags hostPublicKey substituters; };
  nixServe = c.services.nix-serve.enable or false;
  serverHosts = if c.services.bento-server.enable then c.services.bento-server.hosts else null;
  failed = (%s) c;
  warnings = c.warnings;
  users = builtins.attrNames c.users.users;
  units = builtins.attrNames c.systemd.services ++ map (n: n + ".timer") (builtins.attrNames c.systemd.timers);
}) f.nixosConfigurations`,
		nixString(filepath.Join(root, "nixtest/testdata/template.nix")), nixString(tpl), nixString(bento), fill, failedAssertions)
	var hosts map[string]templateHost
	evalJSON(t, expr, &hosts)
	return hosts
}

// The template, as written, evaluates; its only failed assertion is the
// one asking for the server's host key, and the server warns about the
// hosts whose keys are still missing.
func TestTemplateAsWritten(t *testing.T) {
	needNix(t)
	hosts := evalTemplate(t, "{ }")
	if got := keys(hosts); !reflect.DeepEqual(got, []string{"pi", "server", "web"}) {
		t.Fatalf("nixosConfigurations = %v", got)
	}
	web, pi, server := hosts["web"], hosts["pi"], hosts["server"]
	if !web.Bento.Enable || web.Bento.Mode != "build" || web.Bento.User != "web" || web.Bento.Server == nil || *web.Bento.Server != "bento.example.org" {
		t.Errorf("web: %+v", web.Bento)
	}
	if !pi.Bento.Enable || pi.Bento.Mode != "fetch" || pi.Bento.User != "pi" {
		t.Errorf("pi: %+v", pi.Bento)
	}
	// The pi fetches from the cache in its own chroot (bento keygen): no
	// shared HTTP cache of the server's whole store, which every host (and
	// anyone reaching the port) could read.
	for name, h := range hosts {
		if h.NixServe || len(h.Bento.Substituters) != 0 {
			t.Errorf("%s: nix-serve %v, substituters %q: the template's README promises that a host reads only its own store paths", name, h.NixServe, h.Bento.Substituters)
		}
	}
	if server.Bento.Enable {
		t.Errorf("the template's server is a bento client: %+v", server.Bento)
	}
	for _, name := range []string{"web", "pi"} {
		h := hosts[name]
		if len(h.Failed) != 1 || !strings.Contains(h.Failed[0], "serverHostKey is not set") || !strings.Contains(h.Failed[0], "cat /etc/ssh/ssh_host_ed25519_key.pub") {
			t.Errorf("%s: failed assertions %q, want only the one about serverHostKey", name, h.Failed)
		}
		if !slices.Contains(h.Units, "bento-agent") || !slices.Contains(h.Units, "bento-agent.timer") {
			t.Errorf("%s: units %v", name, h.Units)
		}
	}
	if len(server.Failed) != 0 {
		t.Errorf("server: failed assertions %q", server.Failed)
	}
	if len(server.ServerHosts) != 2 || server.ServerHosts["web"].User != "web" || server.ServerHosts["pi"].User != "pi" {
		t.Errorf("server: services.bento-server.hosts = %+v", server.ServerHosts)
	}
	if len(server.Warnings) != 2 || !strings.Contains(strings.Join(server.Warnings, "\n"), "host `pi' has no public key") {
		t.Errorf("server: warnings %q", server.Warnings)
	}
	if !slices.Contains(server.Users, "web") || !slices.Contains(server.Users, "pi") || !slices.Contains(server.Units, "bento-deploy") || !slices.Contains(server.Units, "bento-deploy.timer") {
		t.Errorf("server: users %v, units %v", server.Users, server.Units)
	}
}

// With the values marked CHANGE ME filled in, every host evaluates with
// no failed assertion and no warning, and the server authorizes each
// client's key for that client only.
func TestTemplateFilledIn(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	fill := fmt.Sprintf(`{ config, lib, ... }: {
  services.bento.serverHostKey = lib.mkForce %s;
  services.bento.hostPublicKey = lib.mkForce (%s + " root@" + config.networking.hostName);
}`, nixString(key), nixString(key))
	hosts := evalTemplate(t, fill)
	for name, h := range hosts {
		if len(h.Failed) != 0 || len(h.Warnings) != 0 {
			t.Errorf("%s: failed assertions %q, warnings %q", name, h.Failed, h.Warnings)
		}
	}
	for _, name := range []string{"web", "pi"} {
		got := hosts["server"].ServerHosts[name].PublicKeys
		if want := []string{key + " root@" + name}; !reflect.DeepEqual(got, want) {
			t.Errorf("server: keys of %s = %q, want %q", name, got, want)
		}
	}
}
