package nixtest

import (
	"reflect"
	"testing"
)

// The health checks reach agent.json with only the kind that is set, the
// unit check goes through the system's systemctl, and the unit's stop
// timeout leaves room for the checks to run twice (new system, then the
// old one after a rollback) before systemd kills the agent.
func TestClientHealthChecks(t *testing.T) {
	needNix(t)
	r := evalClient(t, exampleDefs(t, "health checks", publicKey(t)))
	if len(r.Failed) != 0 {
		t.Fatalf("failed assertions: %q", r.Failed)
	}
	svc := r.Services["bento-agent"]
	conf := agentJSON(t, splitExec(t, svc.ServiceConfig["ExecStart"].(string)))
	want := map[string]any{
		"nginx": map[string]any{"unit": "nginx.service", "timeout": "30s", "retries": 2.0, "interval": "5s", "settle": "0s", "continuous": true},
		"site":  map[string]any{"http": map[string]any{"url": "http://127.0.0.1/health", "expectStatus": 200.0}, "timeout": "30s", "retries": 2.0, "interval": "5s", "settle": "0s", "continuous": false},
		"db":    map[string]any{"command": []any{"/bin/true"}, "user": "nobody", "timeout": "30s", "retries": 2.0, "interval": "5s", "settle": "10s", "continuous": false},
	}
	if !reflect.DeepEqual(conf["healthChecks"], want) {
		t.Errorf("healthChecks = %#v\nwant %#v", conf["healthChecks"], want)
	}
	if got := conf["healthUnitCommand"]; !reflect.DeepEqual(got, []any{"/nix/store/00000000000000000000000000000000-systemd/bin/systemctl", "is-active"}) {
		t.Errorf("healthUnitCommand = %#v", got)
	}
	// 60s confirmation + 60s margin + twice the longest check (db: 10s
	// settle, 3 attempts of 30s + 5s, 2 pauses of 5s = 125s).
	if got := svc.ServiceConfig["TimeoutStopSec"]; got != "370s" {
		t.Errorf("TimeoutStopSec = %v, want 370s", got)
	}
}
