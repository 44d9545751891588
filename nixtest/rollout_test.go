package nixtest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// services.bento.rollout.wave: an unsigned integer, 1 by default, and
// nothing the agent's configuration carries (only the server reads it).
func TestClientRolloutWave(t *testing.T) {
	needNix(t)
	key := publicKey(t)
	for _, c := range []struct {
		defs string
		want float64
	}{{"", 1}, {"services.bento.rollout.wave = 0;", 0}, {"services.bento.rollout.wave = 3;", 3}} {
		r := evalClient(t, fmt.Sprintf(`{ %s services.openssh.enable = true; networking.hostName = "h";
		  services.bento = { enable = true; server = "s"; serverHostKey = %s; }; }`, c.defs, nixString(key)))
		if len(r.Failed) != 0 {
			t.Fatalf("failed assertions: %q", r.Failed)
		}
		ro, _ := r.Bento["rollout"].(map[string]any)
		if ro["wave"] != c.want {
			t.Errorf("%q: services.bento.rollout = %v, want wave %v", c.defs, r.Bento["rollout"], c.want)
		}
		conf := agentJSON(t, splitExec(t, r.Services["bento-agent"].ServiceConfig["ExecStart"].(string)))
		if _, ok := conf["rollout"]; ok {
			t.Errorf("agent.json carries the server-only rollout option: %v", conf["rollout"])
		}
	}
	if out, err := evalErr(t, hostExpr(t, []string{nixString(filepath.Join(repoRoot(t), "modules/default.nix")),
		`{ services.bento.rollout.wave = -1; }`}, `c: c.services.bento.rollout.wave`)); err == nil || !strings.Contains(out+err.Error(), "unsigned integer") {
		t.Errorf("a negative wave was accepted: %v %s", err, out)
	}
}

// The step timer runs a command line the real binary accepts.
func TestServerRolloutStepTimer(t *testing.T) {
	needNix(t)
	bin := bentoBinary(t)
	r := evalServer(t, fmt.Sprintf(`{ services.bento-server = {
	  enable = true; chrootRoot = "/srv/chroot"; rollout = { enable = true; interval = "*:0/2"; };
	  package = { type = "derivation"; name = "bento"; outPath = %s; };
	}; }`, nixString(filepath.Dir(filepath.Dir(bin)))))
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	svc := r.Services["bento-rollout-step"]
	argv := splitExec(t, svc.ServiceConfig["ExecStart"].(string))
	if strings.Join(argv, " ") != bin+" rollout step --chroot-root /srv/chroot" {
		t.Errorf("ExecStart %q", argv)
	}
	if svc.ServiceConfig["Type"] != "oneshot" || svc.ServiceConfig["TimeoutStartSec"] != "1h" {
		t.Errorf("bento-rollout-step = %+v", svc.ServiceConfig)
	}
	if tc := r.Timers["bento-rollout-step"].TimerConfig; tc["OnCalendar"] != "*:0/2" || tc["Persistent"] != true {
		t.Errorf("timer %v", tc)
	}
	if out, err := runErr(t, "", argv[0], append(argv[1:], "--help")...); err != nil {
		t.Errorf("the step unit's command line %q is refused: %v\n%s", argv, err, out)
	}
	off := evalServer(t, `{ services.bento-server = { enable = true; hosts.a = { }; }; }`)
	if _, ok := off.Services["bento-rollout-step"]; ok {
		t.Error("bento-rollout-step without rollout.enable")
	}
}
