package nixtest

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// services.bento-server.dashboard: bento serve as a sandboxed root
// service, on loopback unless allowRemote.
func TestServerDashboard(t *testing.T) {
	needNix(t)
	r := evalServer(t, `{ services.bento-server = { enable = true; hosts.a = { }; }; }`)
	if _, ok := r.Services["bento-serve"]; ok {
		t.Error("bento-serve without dashboard.enable")
	}
	for _, tc := range []struct {
		name, defs string
		want       []string
	}{
		{"default", `dashboard.enable = true;`,
			[]string{"serve", "--listen", "127.0.0.1:8470", "--chroot-root", "/home/chroot", "--reports-max-bytes", "67108864", "--reports-max-files", "500", "--no-eval"}},
		{"remote with a flake", `dashboard = { enable = true; listen = "0.0.0.0:8470"; allowRemote = true; }; flake = "/srv/fleet";`,
			[]string{"serve", "--listen", "0.0.0.0:8470", "--chroot-root", "/home/chroot", "--reports-max-bytes", "67108864", "--reports-max-files", "500", "--flake", "/srv/fleet", "--allow-remote"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := evalServer(t, `{ services.bento-server = { enable = true; hosts.a = { }; `+tc.defs+` }; }`)
			if len(r.Failed) != 0 {
				t.Fatalf("failed assertions: %q", r.Failed)
			}
			svc, ok := r.Services["bento-serve"]
			if !ok {
				t.Fatal("no bento-serve service")
			}
			sc := svc.ServiceConfig
			argv := splitExec(t, sc["ExecStart"].(string))
			if !strings.HasSuffix(argv[0], "-bento/bin/bento") || !reflect.DeepEqual(argv[1:], tc.want) {
				t.Errorf("ExecStart = %q, want … %q", argv, tc.want)
			}
			// Root, but read-only everywhere except the history, and with
			// no capability beyond reading the hosts' files.
			for k, v := range map[string]any{"ProtectSystem": "strict", "ProtectHome": "read-only", "NoNewPrivileges": true, "PrivateDevices": true,
				"ReadWritePaths": []any{"/home/chroot/.bento-state"}, "CapabilityBoundingSet": []any{"CAP_DAC_READ_SEARCH"}} {
				if !reflect.DeepEqual(sc[k], v) {
					t.Errorf("serviceConfig.%s = %v, want %v", k, sc[k], v)
				}
			}
			if _, set := sc["User"]; set {
				t.Errorf("User = %v: the dashboard runs as root (docs/serve.md says why)", sc["User"])
			}
			if !slices.Contains(r.Tmpfiles, "d /home/chroot/.bento-state 0700 root root -") {
				t.Errorf("tmpfiles %q lack the state directory the service writes", r.Tmpfiles)
			}
		})
	}
}
