package nixtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

type serverUser struct {
	IsSystemUser bool   `json:"isSystemUser"`
	IsNormalUser bool   `json:"isNormalUser"`
	Group        string `json:"group"`
	Home         string `json:"home"`
	CreateHome   bool   `json:"createHome"`
	Openssh      struct {
		AuthorizedKeys struct {
			Keys []string `json:"keys"`
		} `json:"authorizedKeys"`
	} `json:"openssh"`
}

type serverResult struct {
	Failed   []string              `json:"failed"`
	Warnings []string              `json:"warnings"`
	Users    map[string]serverUser `json:"users"`
	Groups   []string              `json:"groups"`
	Tmpfiles []string              `json:"tmpfiles"`
	SSH      struct {
		Enable      bool           `json:"enable"`
		Settings    map[string]any `json:"settings"`
		ExtraConfig string         `json:"extraConfig"`
	} `json:"ssh"`
	Services map[string]unit `json:"services"`
	Timers   map[string]unit `json:"timers"`
	NixServe map[string]any  `json:"nixServe"`
	Packages []string        `json:"packages"`
}

const serverSelect = `c: {
  failed = (` + failedAssertions + `) c;
  warnings = c.warnings;
  users = c.users.users;
  groups = builtins.attrNames c.users.groups;
  tmpfiles = c.systemd.tmpfiles.rules;
  ssh = c.services.openssh;
  services = c.systemd.services;
  timers = c.systemd.timers;
  nixServe = c.services.nix-serve;
  packages = map toString c.environment.systemPackages;
}`

func evalServer(t testing.TB, defs string) serverResult {
	t.Helper()
	var r serverResult
	hostEval(t, []string{nixString(filepath.Join(repoRoot(t), "modules/default.nix")), defs}, serverSelect, &r)
	return r
}

func TestServerModule(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	r := evalServer(t, fmt.Sprintf(`{
	  services.bento-server = {
	    enable = true;
	    hosts.web-1.publicKeys = [ %s "restrict,from=\"10.0.0.0/8\" %s" ];
	    hosts."pi.home" = { user = "pi-sftp"; };
	    flake = "/srv/fleet";
	    retention = "6h";
	    deploy = { enable = true; interval = "hourly"; extraArgs = [ "--keep-going" ]; };
	  };
	}`, nixString(key), strings.ReplaceAll(key, `"`, `\"`)))
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	if want := []string{"services.bento-server: host `pi.home' has no public key (services.bento.hostPublicKey on that host), so it cannot log in yet."}; !reflect.DeepEqual(r.Warnings, want) {
		t.Errorf("warnings = %q, want %q", r.Warnings, want)
	}

	// One system user per host, in the group, whose home is its chroot.
	if got := keys(r.Users); !reflect.DeepEqual(got, []string{"pi-sftp", "web-1"}) {
		t.Fatalf("users = %v", got)
	}
	for name, home := range map[string]string{"web-1": "/home/chroot/web-1", "pi-sftp": "/home/chroot/pi.home"} {
		u := r.Users[name]
		if !u.IsSystemUser || u.IsNormalUser || u.Group != "bento" || u.Home != home || u.CreateHome {
			t.Errorf("user %s = %+v", name, u)
		}
	}
	// Plain keys get "restrict" (no forwarding, no pty); keys with options are kept.
	if got, want := r.Users["web-1"].Openssh.AuthorizedKeys.Keys, []string{"restrict " + key, `restrict,from="10.0.0.0/8" ` + key}; !reflect.DeepEqual(got, want) {
		t.Errorf("web-1 keys = %q, want %q", got, want)
	}
	if !reflect.DeepEqual(r.Groups, []string{"bento"}) {
		t.Errorf("groups = %v", r.Groups)
	}

	// sshd's ownership rules: root-owned chroots, reports/ owned by the host's user.
	wantTmp := []string{
		"d /home/chroot 0755 root root -",
		"d /home/chroot/pi.home 0755 root root -",
		"d /home/chroot/pi.home/reports 0755 pi-sftp bento -",
		"d /home/chroot/web-1 0755 root root -",
		"d /home/chroot/web-1/reports 0755 web-1 bento -",
	}
	if !reflect.DeepEqual(r.Tmpfiles, wantTmp) {
		t.Errorf("tmpfiles =\n%s\nwant\n%s", strings.Join(r.Tmpfiles, "\n"), strings.Join(wantTmp, "\n"))
	}

	// sshd: on, MaxStartups sized for the fleet (two hosts: the floor of
	// 100), the Match block last.
	if !r.SSH.Enable || r.SSH.Settings["MaxStartups"] != "100:30:200" {
		t.Errorf("openssh: enable %v, settings %v", r.SSH.Enable, r.SSH.Settings)
	}
	match := matchBlock(t, r.SSH.ExtraConfig)
	for _, want := range []string{
		"Match Group bento", "ChrootDirectory %h", "ForceCommand internal-sftp", "PermitTTY no",
		"DisableForwarding yes", "AllowTcpForwarding no", "AllowAgentForwarding no", "AllowStreamLocalForwarding no",
		"X11Forwarding no", "PermitTunnel no", "PermitListen none", "PermitOpen none", "GatewayPorts no",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "AuthenticationMethods publickey",
	} {
		if !slices.Contains(match, want) {
			t.Errorf("the Match block lacks %q:\n%s", want, r.SSH.ExtraConfig)
		}
	}

	// The deploy timer.
	svc := r.Services["bento-deploy"]
	argv := splitExec(t, svc.ServiceConfig["ExecStart"].(string))
	if !strings.HasSuffix(argv[0], "-bento/bin/bento") || !reflect.DeepEqual(argv[1:], []string{"deploy", "--flake", "/srv/fleet", "--chroot-root", "/home/chroot", "--reports-max-bytes", "67108864", "--reports-max-files", "500", "--retention", "6h", "--keep-going"}) {
		t.Errorf("bento-deploy ExecStart = %q", argv)
	}
	if svc.ServiceConfig["TimeoutStartSec"] != "4h" {
		t.Errorf("bento-deploy has no start timeout: a hung deploy would block its timer: %v", svc.ServiceConfig)
	}
	if svc.ServiceConfig["Type"] != "oneshot" || svc.RestartIfChanged == nil || *svc.RestartIfChanged || svc.UnitConfig["X-StopOnRemoval"] != false {
		t.Errorf("bento-deploy = %+v", svc)
	}
	if tc := r.Timers["bento-deploy"].TimerConfig; tc["OnCalendar"] != "hourly" || tc["Persistent"] != true {
		t.Errorf("bento-deploy timer = %v", tc)
	}
	if !anyHasSuffix(r.Packages, "-bento") {
		t.Errorf("bento is not on the server's PATH: %v", r.Packages)
	}
	if r.NixServe["enable"] != false {
		t.Errorf("nix-serve is on without cache.enable")
	}
}

// matchBlock returns the trimmed lines of the Match block.
func matchBlock(t testing.TB, extra string) []string {
	t.Helper()
	var lines []string
	in := false
	for _, l := range strings.Split(extra, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "Match ") {
			in = true
		}
		if in && l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("no Match block in extraConfig:\n%s", extra)
	}
	return lines
}

func TestServerOptions(t *testing.T) {
	needNix(t)
	r := evalServer(t, `{
	  services.openssh.extraConfig = "ClientAliveInterval 60";
	  services.bento-server = {
	    enable = true; chrootRoot = "/srv/chroot"; group = "fleet"; maxStartups = null;
	    hosts.a = { };
	    cache = { enable = true; secretKeyFile = "/var/lib/cache.sec"; port = 8080; openFirewall = true; };
	  };
	}`)
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	if r.Users["a"].Home != "/srv/chroot/a" || r.Users["a"].Group != "fleet" || !reflect.DeepEqual(r.Groups, []string{"fleet"}) {
		t.Errorf("users %+v, groups %v", r.Users, r.Groups)
	}
	if r.Tmpfiles[0] != "d /srv/chroot 0755 root root -" {
		t.Errorf("tmpfiles %q", r.Tmpfiles)
	}
	if _, set := r.SSH.Settings["MaxStartups"]; set {
		t.Errorf("maxStartups = null still sets MaxStartups: %v", r.SSH.Settings)
	}
	// Another module's extraConfig comes first: the Match block stays last.
	if !strings.HasPrefix(r.SSH.ExtraConfig, "ClientAliveInterval 60\n") || !strings.Contains(r.SSH.ExtraConfig, "Match Group fleet") {
		t.Errorf("extraConfig =\n%s", r.SSH.ExtraConfig)
	}
	if _, ok := r.Services["bento-deploy"]; ok {
		t.Errorf("bento-deploy without deploy.enable")
	}
	for k, v := range map[string]any{"enable": true, "port": 8080.0, "openFirewall": true, "secretKeyFile": "/var/lib/cache.sec", "bindAddress": "0.0.0.0"} {
		if !reflect.DeepEqual(r.NixServe[k], v) {
			t.Errorf("services.nix-serve.%s = %v, want %v", k, r.NixServe[k], v)
		}
	}
}

func TestServerAssertions(t *testing.T) {
	needNix(t)
	for _, tc := range []struct{ name, defs, want string }{
		{"shared user", `hosts.a.user = "x"; hosts.b.user = "x";`, "two hosts share an SFTP user"},
		{"root user", `hosts.a.user = "root";`, "no host may use the root user"},
		{"host name", `hosts."../etc" = { };`, "`../etc' is not a usable host name"},
		{"user name", `hosts.a.user = "` + strings.Repeat("u", 40) + `";`, "is not a usable user name"},
		{"deploy without flake", `deploy.enable = true;`, "needs services.bento-server.flake"},
		{"cache without key", `cache.enable = true;`, "needs services.bento-server.cache.secretKeyFile"},
		{"chroot in store", `chrootRoot = "/nix/store/x";`, "outside the Nix store"},
		{"chroot relative", `chrootRoot = "/";`, "must be an absolute directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := evalServer(t, `{ services.bento-server = { enable = true; `+tc.defs+` }; }`)
			if !strings.Contains(strings.Join(r.Failed, "\n"), tc.want) {
				t.Errorf("failed assertions %q, want one containing %q", r.Failed, tc.want)
			}
		})
	}
	r := evalServer(t, `{ services.bento-server.hosts.a = { }; }`)
	if len(r.Users)+len(r.Tmpfiles)+len(r.Failed)+len(r.Services) != 0 || r.SSH.ExtraConfig != "" || r.SSH.Enable {
		t.Errorf("a disabled server module defines something: %+v", r)
	}
}

// The sshd configuration the server module produces is accepted by the
// real sshd, and a member of the group gets exactly the restrictions
// (sshd -T evaluates the Match block for a user).
func TestServerSSHDConfig(t *testing.T) {
	needNix(t)
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		if sshd, err = exec.LookPath("sshd"); err != nil {
			t.Skip("sshd is not installed (scripts/deps.sh installs it)")
		}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Skipf("sshd -t needs /run/sshd: %v", err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	grp, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _ := sshKey(t)
	render := func(group string) string {
		r := evalServer(t, fmt.Sprintf(`{ services.bento-server = { enable = true; group = %s; hosts.web-1 = { }; }; }`, nixString(group)))
		var b strings.Builder
		fmt.Fprintf(&b, "HostKey %s\nPidFile none\nUsePAM no\nSubsystem sftp internal-sftp\n", hostKey)
		for _, k := range sortedKeys(r.SSH.Settings) {
			fmt.Fprintf(&b, "%s %v\n", k, r.SSH.Settings[k])
		}
		b.WriteString(r.SSH.ExtraConfig)
		path := filepath.Join(t.TempDir(), "sshd_config")
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}

	conf := render("bento")
	if out, err := runErr(t, "", sshd, "-t", "-f", conf); err != nil {
		data, _ := os.ReadFile(conf)
		t.Fatalf("sshd -t refuses the configuration: %v\n%s\n%s", err, out, data)
	}

	// Evaluate the block for this test's own user by naming its group.
	conf = render(grp.Name)
	effective := func(conn string) map[string]string {
		out := run(t, "", sshd, "-T", "-f", conf, "-C", conn)
		m := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				m[k] = v
			}
		}
		return m
	}
	got := effective("user=" + me.Username + ",host=client.example.org,addr=192.0.2.10")
	for k, want := range map[string]string{
		"chrootdirectory": "%h", "forcecommand": "internal-sftp", "permittty": "no",
		"disableforwarding": "yes", "allowtcpforwarding": "no", "allowagentforwarding": "no",
		"allowstreamlocalforwarding": "no", "x11forwarding": "no", "permittunnel": "no",
		"permitopen": "none", "permitlisten": "none", "gatewayports": "no", "permituserrc": "no",
		"passwordauthentication": "no", "kbdinteractiveauthentication": "no",
		"authenticationmethods": "publickey", "maxstartups": "100:30:200",
	} {
		if got[k] != want {
			t.Errorf("sshd -T for a member of the group: %s = %q, want %q", k, got[k], want)
		}
	}
	if nobody, err := user.Lookup("nobody"); err == nil && nobody.Gid != me.Gid && !inGroup(t, nobody, grp.Gid) {
		if other := effective("user=nobody,host=h,addr=192.0.2.11"); other["chrootdirectory"] != "none" || other["forcecommand"] != "none" {
			t.Errorf("the Match block applies outside the group: %v", other)
		}
	}
}

func inGroup(t testing.TB, u *user.User, gid string) bool {
	ids, err := u.GroupIds()
	if err != nil {
		return true
	}
	return slices.Contains(ids, gid)
}

// The deploy timer's command line is accepted by the real bento's parser.
func TestDeployCommandLine(t *testing.T) {
	needNix(t)
	bin := bentoBinary(t)
	if help, _ := runErr(t, "", bin, "deploy", "--help"); !strings.Contains(help, "--chroot-root") {
		t.Skip("./cmd/bento has no `deploy --chroot-root` yet (issue 4)")
	}
	r := evalServer(t, fmt.Sprintf(`{ services.bento-server = {
	  enable = true; flake = "/srv/fleet"; deploy = { enable = true; extraArgs = [ "--keep-going" ]; };
	  package = { type = "derivation"; name = "bento"; outPath = %s; };
	}; }`, nixString(filepath.Dir(filepath.Dir(bin)))))
	argv := splitExec(t, r.Services["bento-deploy"].ServiceConfig["ExecStart"].(string))
	if argv[0] != bin {
		t.Fatalf("ExecStart runs %q, want %s", argv, bin)
	}
	if out, err := runErr(t, "", argv[0], append(argv[1:], "--help")...); err != nil {
		t.Errorf("the deploy unit's command line %q is refused: %v\n%s", argv, err, out)
	}
}

// Mirrors: a push after every deploy (whatever its exit status), a timer
// for pull-reports, both with the mirrors' keys pinned.
func TestServerMirrors(t *testing.T) {
	needNix(t)
	r := evalServer(t, `{
	  services.bento-server = {
	    enable = true; chrootRoot = "/srv/chroot"; flake = "/srv/fleet"; deploy.enable = true;
	    hosts.a = { };
	    mirrors = [
	      { address = "m1.example"; hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl m1"; }
	      { address = "fd00::7"; port = 2222; chrootRoot = "/home/chroot"; hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl m2"; }
	    ];
	  };
	}`)
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	for _, verb := range []string{"push", "pull-reports"} {
		svc, ok := r.Services["bento-mirror-"+verb]
		if !ok {
			t.Fatalf("no bento-mirror-%s service", verb)
		}
		argv := splitExec(t, svc.ServiceConfig["ExecStart"].(string))
		want := []string{"mirror", verb, "--chroot-root", "/srv/chroot", "--known-hosts"}
		if len(argv) != 11 || !reflect.DeepEqual(argv[1:6], want) || argv[7] != "--identity" || argv[8] != "/var/lib/bento/mirror-key" ||
			argv[9] != "ssh://root@m1.example:22/srv/chroot" || argv[10] != "ssh://root@[fd00::7]:2222/home/chroot" {
			t.Errorf("bento-mirror-%s: ExecStart = %q", verb, argv)
		}
		kh, err := os.ReadFile(argv[6])
		if err == nil && !strings.Contains(string(kh), "[fd00::7]:2222 ssh-ed25519") {
			t.Errorf("known hosts:\n%s", kh)
		}
	}
	dep := r.Services["bento-deploy"]
	if !reflect.DeepEqual(dep.UnitConfig["OnSuccess"], []any{"bento-mirror-push.service"}) || !reflect.DeepEqual(dep.UnitConfig["OnFailure"], []any{"bento-mirror-push.service"}) {
		t.Errorf("bento-deploy does not start the push: %v", dep.UnitConfig)
	}
	if r.Timers["bento-mirror-pull-reports"].TimerConfig["OnCalendar"] != "*:0/5" {
		t.Errorf("pull-reports timer: %v", r.Timers["bento-mirror-pull-reports"])
	}
}

// On a mirror, the primaries' keys log in as root, to SFTP only.
func TestServerMirrorPushKeys(t *testing.T) {
	needNix(t)
	r := evalServer(t, `{ services.bento-server = { enable = true; hosts.a = { }; mirrorPushKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl primary" ]; }; }`)
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	want := []string{`restrict,command="internal-sftp" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl primary`}
	if got := r.Users["root"].Openssh.AuthorizedKeys.Keys; !reflect.DeepEqual(got, want) {
		t.Errorf("root's keys %q, want %q", got, want)
	}
	if r.SSH.Settings["PermitRootLogin"] != "prohibit-password" {
		t.Errorf("PermitRootLogin = %v", r.SSH.Settings["PermitRootLogin"])
	}
}
