package deploy

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/publish"
)

// A row's error names no host (its line does) and no publish stage (the
// row is the publication); other stages stay, as do foreign hosts.
func TestRowErrorDetail(t *testing.T) {
	cause := errors.New("disk full")
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"publish stage", &fleet.HostError{Host: "alpha", Stage: publish.Stage, Err: cause}, "disk full"},
		{"refused user", &fleet.HostError{Host: "alpha", Err: errors.New(`services.bento.user is "root": …`)}, `services.bento.user is "root": …`},
		{"another stage", &fleet.HostError{Host: "alpha", Stage: "build", Err: cause}, "build: disk full"},
		{"another host's", &fleet.HostError{Host: "beta", Stage: publish.Stage, Err: cause}, "host beta: publish: disk full"},
		{"plain", errors.New("secrets: unreadable"), "secrets: unreadable"},
		{"none", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Row{Result: publish.Result{Host: "alpha", Status: publish.StatusFailed, Err: tt.err}}
			if got := r.ErrorDetail(); got != tt.want {
				t.Errorf("ErrorDetail() = %q, want %q", got, tt.want)
			}
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			var out struct {
				Error string `json:"error"`
				OK    bool   `json:"ok"`
			}
			if err := json.Unmarshal(data, &out); err != nil || out.Error != tt.want || out.OK {
				t.Errorf("JSON %s (%v)", data, err)
			}
		})
	}
}

// Failure names the hosts in the order the exit message has always
// listed them: failed, published despite their build, not copied; then
// prune errors; then hosts that did not evaluate.
func TestReportFailure(t *testing.T) {
	ok := Row{Result: publish.Result{Host: "ok", Status: publish.StatusPublished}}
	bad := Row{Result: publish.Result{Host: "bad", Status: publish.StatusFailed, Err: errors.New("x")}}
	forced := Row{Result: publish.Result{Host: "forced", Status: publish.StatusPublished}, BuildFailed: true}
	notCopied := Row{Result: publish.Result{Host: "nocopy", Status: publish.StatusUnchanged}, CopyError: "copy to s3://x: denied"}
	tests := []struct {
		name string
		r    Report
		want string
	}{
		{"all fine", Report{Hosts: []Row{ok}}, ""},
		{"hosts", Report{Hosts: []Row{ok, bad, forced, notCopied}, PruneErrors: []string{"p"}, EvalFailed: true},
			"1 of 4 hosts failed and keep their previous publication: bad; 1 hosts were published although their build failed: forced; 1 hosts were built and published but not copied to the cache: nocopy"},
		{"prune errors", Report{Hosts: []Row{ok}, PruneErrors: []string{"host old: prune: busy", "host gone: prune: busy"}, EvalFailed: true},
			"host old: prune: busy; host gone: prune: busy"},
		{"eval failed", Report{Hosts: []Row{ok}, EvalFailed: true}, "some hosts could not be evaluated and were not deployed (see above)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Failure()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Failure() = %q\nwant %q", got, tt.want)
			}
		})
	}
}
