package status

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bento-nix/bento/fleet"
	"github.com/bento-nix/bento/manifest"
)

// TestStates crafts one host's chroot per case and checks the state and
// message a user would read, and the exit status bento status would give.
func TestStates(t *testing.T) {
	const h = "alpha"
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	fl := func(hosts ...fleet.Host) *fleet.Fleet { return &fleet.Fleet{Ref: "/fleet", Hosts: hosts} }
	tests := []struct {
		name   string
		setup  func(c chroot)
		fleet  *fleet.Fleet
		evalFx map[string]error
		builds map[string]Build
		stale  time.Duration
		state  State
		msg    string // substring of the message
		exit   int
	}{
		{
			name: "up to date",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.report(h, applied(v1, sysA, ago(3*time.Minute)))
			},
			state: UpToDate, exit: ExitUpToDate,
		},
		{
			// The original's defect: a host that finishes the previous
			// version after a new publication is not up to date, however
			// recent its report.
			name: "report of an older version finished after the new publication",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				c.report(h, applied(v1, sysA, ago(time.Minute)))
			},
			state: Pending, msg: "not seen yet (published 10m ago)", exit: ExitPending,
		},
		{
			name: "new version seen, not applied yet",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion = v2
				c.report(h, r)
			},
			state: Pending, msg: "seen, not applied yet", exit: ExitPending,
		},
		{
			name: "update in progress",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion, r.Stage, r.Result = v2, v2, manifest.StageBuilt, ""
				c.report(h, r)
			},
			state: Pending, msg: "updating: built", exit: ExitPending,
		},
		{
			name: "live progress of the tick under way",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				c.report(h, applied(v1, sysA, ago(time.Hour)))
				c.json(h, manifest.ProgressFile, progressRec(h, v2, ago(2*time.Minute), manifest.ProgressBuilding, ago(45*time.Second)))
			},
			state: Pending, msg: "updating: building (45s)", exit: ExitPending,
		},
		{
			name: "live progress of a host whose last report is older than its stale bound",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				c.report(h, applied(v1, sysA, ago(5*time.Hour)))
				c.json(h, manifest.ProgressFile, progressRec(h, v2, ago(time.Hour), manifest.ProgressBuilding, ago(50*time.Minute)))
			},
			stale: 3 * time.Hour,
			state: Pending, msg: "updating: building (50m)", exit: ExitPending,
		},
		{
			name: "first tick of a host, under way",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				c.json(h, manifest.ProgressFile, progressRec(h, v2, ago(time.Minute), manifest.ProgressFetching, ago(time.Minute)))
			},
			state: NeverSeen, msg: "first tick: updating: fetching (1m)", exit: ExitSilent,
		},
		{
			name: "progress of an attempt whose report arrived is old news",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v2, sysB, ago(time.Minute))
				c.report(h, r)
				c.json(h, manifest.ProgressFile, progressRec(h, v2, r.StartedAt, manifest.ProgressReporting, ago(time.Minute)))
			},
			state: UpToDate, exit: ExitUpToDate,
		},
		{
			name: "progress left by a tick killed hours ago is ignored",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(3*time.Hour))
				r.SeenVersion = v2
				c.report(h, r)
				c.json(h, manifest.ProgressFile, progressRec(h, v2, ago(150*time.Minute), manifest.ProgressBuilding, ago(140*time.Minute)))
			},
			stale: 24 * time.Hour,
			state: Pending, msg: "seen, not applied yet", exit: ExitPending,
		},
		{
			name: "hostile progress (escape sequence in the stage) is ignored",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(5*time.Minute))
				r.SeenVersion = v2
				c.report(h, r)
				c.json(h, manifest.ProgressFile, progressRec(h, v2, ago(time.Minute), "\x1b[2Jbuilding", ago(time.Minute)))
			},
			state: Pending, msg: "seen, not applied yet", exit: ExitPending,
		},
		{
			name: "progress naming another host is ignored",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(5*time.Minute))
				r.SeenVersion = v2
				c.report(h, r)
				c.json(h, manifest.ProgressFile, progressRec("beta", v2, ago(time.Minute), manifest.ProgressBuilding, ago(time.Minute)))
			},
			state: Pending, msg: "seen, not applied yet", exit: ExitPending,
		},
		{
			name: "build of the published version failed",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result = manifest.StageFailed, manifest.ResultFailure
				r.Error = "build: error: builder for '/nix/store/x.drv' failed\nwith exit code 1"
				r.Attempts = 3
				nr := now.Add(12 * time.Minute)
				r.NextRetry = &nr
				c.report(h, r)
			},
			state: Failing, msg: "build: error: builder for '/nix/store/x.drv' failed with exit code 1 (attempt 3, retry in 12m)", exit: ExitFailing,
		},
		{
			name: "a failed build's row shows the summary, not the command line",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result = manifest.StageFailed, manifest.ResultFailure
				r.Error = "build: nix build --no-link path:/var/lib/bento/tree#nixosConfigurations.beta: error: builder for '/nix/store/x.drv' failed"
				r.Summary = "build: error: builder for '/nix/store/x.drv' failed"
				c.report(h, r)
			},
			state: Failing, msg: "build: error: builder for '/nix/store/x.drv' failed", exit: ExitFailing,
		},
		{
			name: "a report without a summary (an older agent) shows its whole error",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result = manifest.StageFailed, manifest.ResultFailure
				r.Error = "build: nix build --no-link path:/t#x: error: boom"
				c.report(h, r)
			},
			state: Failing, msg: "build: nix build --no-link path:/t#x: error: boom", exit: ExitFailing,
		},
		{
			name: "an older version failed, the newer is not tried yet",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied("", "", ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v1, v1
				r.Stage, r.Result, r.Error = manifest.StageFailed, manifest.ResultFailure, "build: boom"
				c.report(h, r)
			},
			state: Pending, msg: "version 11111111 had failed: build: boom", exit: ExitPending,
		},
		{
			name: "rolled back after a failed activation",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result = manifest.StageRolledBack, manifest.ResultRolledBack
				r.RollbackReason, r.Error = "activation-failed", "switch-to-configuration exited 1"
				c.report(h, r)
			},
			state: RolledBack, msg: "rolled back: activation failed: switch-to-configuration exited 1", exit: ExitFailing,
		},
		{
			name: "rolled back when the server was lost",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result, r.RollbackReason = manifest.StageRolledBack, manifest.ResultRolledBack, "server-unreachable"
				c.report(h, r)
			},
			state: RolledBack, msg: "rolled back: server unreachable after the switch", exit: ExitFailing,
		},
		{
			name: "rolled back by a failed health check, the old system healthy",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result, r.RollbackReason = manifest.StageRolledBack, manifest.ResultRolledBack, manifest.RollbackHealthCheck
				r.Error = "health check web (http) failed after 3 attempt(s): GET http://127.0.0.1/ answered 502"
				r.Health = &manifest.Health{System: sysB, Checks: []manifest.HealthCheck{{Name: "db", Kind: "unit", OK: true, Attempts: 1}, {Name: "web", Kind: "http", Attempts: 3, Output: "answered 502"}}}
				r.PreviousHealth = &manifest.Health{System: sysA, OK: true}
				c.report(h, r)
			},
			state: RolledBack, msg: "rolled back: health check web failed: health check web (http) failed after 3 attempt(s)", exit: ExitFailing,
		},
		{
			name: "rolled back by a health check the old system fails too",
			setup: func(c chroot) {
				c.publish(h, v2, ago(10*time.Minute), sysB)
				r := applied(v1, sysA, ago(time.Minute))
				r.SeenVersion, r.AttemptedVersion = v2, v2
				r.Stage, r.Result, r.RollbackReason = manifest.StageRolledBack, manifest.ResultRolledBack, manifest.RollbackHealthCheck
				r.Health = &manifest.Health{Checks: []manifest.HealthCheck{{Name: "web", Kind: "http"}}}
				r.PreviousHealth = &manifest.Health{Checks: []manifest.HealthCheck{{Name: "web", Kind: "http"}}}
				c.report(h, r)
			},
			state: RolledBack, msg: "rolled back: health check web failed; the previous system fails its checks too", exit: ExitFailing,
		},
		{
			// A continuous check on a quiet tick: reported, not rolled
			// back; the state stays (the system is the published one).
			name: "up to date, a continuous health check fails",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				r := applied(v1, sysA, ago(3*time.Minute))
				r.Health = &manifest.Health{System: sysA, Checks: []manifest.HealthCheck{
					{Name: "nginx", Kind: "unit", Attempts: 2, Output: "systemctl is-active nginx.service exited with status 3:\nfailed"},
					{Name: "ok", Kind: "command", OK: true, Attempts: 1},
					{Name: "x\x1b[2Jy", Kind: "command", Attempts: 1},
				}}
				c.report(h, r)
			},
			state: UpToDate, msg: "unhealthy: nginx, x\\x1b[2Jy (systemctl is-active nginx.service exited with status 3: failed)", exit: ExitUpToDate,
		},
		{
			name: "drift: applied, but runs another system",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.report(h, applied(v1, sysB, ago(time.Minute)))
			},
			state: Drift, msg: "runs bbbbbbbb-nixos-system-b-2, the server built aaaaaaaa-nixos-system-a-1 (bento diff alpha)", exit: ExitFailing,
		},
		{
			// deploy --no-build: the server's last build is of another
			// version, so it is no measure (it was a false drift).
			name: "no drift against an older build when the manifest names no system",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), "")
				c.report(h, applied(v1, sysA, ago(time.Minute)))
			},
			builds: map[string]Build{h: {OutPath: sysB}},
			state:  UpToDate, msg: "not built by the server", exit: 0,
		},
		{
			name: "boot operation compares the system it will boot",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysB)
				r := applied(v1, sysB, ago(time.Minute))
				r.Operation, r.CurrentSystem = "boot", sysA
				c.report(h, r)
			},
			state: UpToDate, exit: ExitUpToDate,
		},
		{
			name: "self-updated hosts run their own system and are up to date",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				r := applied(v1, sysB, ago(time.Minute))
				r.Result = manifest.ResultAutoUpdated
				c.report(h, r)
			},
			state: UpToDate, msg: "self-update", exit: ExitUpToDate,
		},
		{
			name: "reboot required",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				r := applied(v1, sysA, ago(time.Minute))
				r.RebootRequired = true
				at := now.Add(2*time.Hour + 5*time.Minute)
				r.RebootScheduled = &at
				c.report(h, r)
			},
			state: RebootRequired, msg: "reboot scheduled in 2h05m", exit: ExitPending,
		},
		{
			name: "stale after the default threshold",
			setup: func(c chroot) {
				c.publish(h, v1, ago(5*time.Hour), sysA)
				c.report(h, applied(v1, sysA, ago(2*time.Hour+5*time.Minute)))
			},
			state: Stale, msg: "silent for 2h05m (over 45m); its last report said up-to-date", exit: ExitSilent,
		},
		{
			name: "not stale within three poll intervals of the host",
			setup: func(c chroot) {
				c.publish(h, v1, ago(5*time.Hour), sysA)
				c.report(h, applied(v1, sysA, ago(2*time.Hour+5*time.Minute)))
			},
			fleet: fl(managed(h, "hourly")),
			state: UpToDate, exit: ExitUpToDate,
		},
		{
			name: "--stale-after overrides the poll interval",
			setup: func(c chroot) {
				c.publish(h, v1, ago(5*time.Hour), sysA)
				c.report(h, applied(v1, sysA, ago(20*time.Minute)))
			},
			fleet: fl(managed(h, "hourly")),
			stale: 10 * time.Minute,
			state: Stale, msg: "silent for 20m (over 10m)", exit: ExitSilent,
		},
		{
			name: "a failing host stays failing when silent",
			setup: func(c chroot) {
				c.publish(h, v2, ago(5*24*time.Hour), sysB)
				r := applied(v1, sysA, ago(4*24*time.Hour))
				r.AttemptedVersion, r.Result, r.Stage, r.Error = v2, manifest.ResultFailure, manifest.StageFailed, "build: boom"
				c.report(h, r)
			},
			state: Failing, msg: "build: boom", exit: ExitFailing,
		},
		{
			name:  "never seen",
			setup: func(c chroot) { c.publish(h, v1, ago(10*time.Minute), sysA) },
			state: NeverSeen, msg: "no report yet", exit: ExitSilent,
		},
		{
			name:  "never seen long after publication",
			setup: func(c chroot) { c.publish(h, v1, ago(4*24*time.Hour), sysA) },
			state: NeverSeen, msg: "no report in the 4d since publication: is the host's agent set up", exit: ExitSilent,
		},
		{
			name:  "deployed host with nothing published",
			setup: func(c chroot) {},
			fleet: fl(managed(h, "")),
			state: Unpublished, msg: "run bento deploy", exit: ExitPending,
		},
		{
			name: "removed from the flake",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.report(h, applied(v1, sysA, ago(time.Minute)))
			},
			fleet: fl(),
			state: Removed, msg: "bento deploy --prune removes its chroot", exit: ExitUpToDate,
		},
		{
			name: "removed from the flake, only reports/ left",
			setup: func(c chroot) {
				c.report(h, applied(v1, sysA, ago(time.Minute)))
			},
			fleet: fl(),
			state: Removed, msg: "only its reports/ are left: bento deploy --prune --prune-reports removes them", exit: ExitUpToDate,
		},
		{
			name:  "not managed",
			setup: func(c chroot) {},
			fleet: fl(fleet.Host{Name: h}),
			state: NotManaged, msg: "does not import the bento module", exit: ExitUpToDate,
		},
		{
			name:  "disabled, with a chroot from before",
			setup: func(c chroot) { c.publish(h, v1, ago(time.Hour), sysA) },
			fleet: fl(fleet.Host{Name: h, Managed: true}),
			state: Disabled, msg: "services.bento.enable = false; its chroot is left from before", exit: ExitUpToDate,
		},
		{
			name: "a host that fails to evaluate is still judged from its chroot",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.report(h, applied(v1, sysA, ago(time.Minute)))
			},
			fleet:  fl(),
			evalFx: map[string]error{h: errors.New("error: attribute 'foo' missing\n at line 3")},
			state:  UpToDate, msg: "evaluation failed: error: attribute 'foo' missing at line 3", exit: ExitUpToDate,
		},
		{
			name: "the host's clock is ahead",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.report(h, applied(v1, sysA, now.Add(5*time.Minute)))
			},
			state: UpToDate, msg: "the host's clock is 5m ahead", exit: ExitUpToDate,
		},
		{
			name: "unreadable: invalid JSON",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.raw(h, manifest.StatusFile, []byte(`{"format": 1, "host": x}`))
			},
			state: Unreadable, msg: "unreadable report: status.json: invalid JSON at byte 23: invalid character 'x' looking for beginning of value", exit: ExitFailing,
		},
		{
			name: "unreadable: truncated",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.raw(h, manifest.StatusFile, []byte(`{"format": 1, "host": "alp`))
			},
			state: Unreadable, msg: "truncated JSON (ends after 26 bytes)", exit: ExitFailing,
		},
		{
			name: "unreadable: wrong types",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.raw(h, manifest.StatusFile, []byte(`{"format": 1, "host": "alpha", "appliedVersion": 42, "finishedAt": "2025-03-14T11:00:00Z"}`))
			},
			state: Unreadable, msg: "unreadable report: status.json: appliedVersion is a number, not a string", exit: ExitFailing,
		},
		{
			name: "unreadable: not an object",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.raw(h, manifest.StatusFile, []byte(`[1, 2]`))
			},
			state: Unreadable, msg: "status.json: the document is an array, not an object", exit: ExitFailing,
		},
		{
			name: "unreadable: huge",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.raw(h, manifest.StatusFile, []byte(`{"error":"`+strings.Repeat("x", 2<<20)+`"}`))
			},
			state: Unreadable, msg: "unreadable report: reports/status.json is 2.0 MiB, over the 1.0 MiB limit", exit: ExitFailing,
		},
		{
			name:  "unreadable: empty",
			setup: func(c chroot) { c.publish(h, v1, ago(time.Hour), sysA); c.raw(h, manifest.StatusFile, nil) },
			state: Unreadable, msg: "status.json is empty", exit: ExitFailing,
		},
		{
			name: "unreadable: another host's report",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				r := applied(v1, sysA, ago(time.Minute))
				r.Host = "beta"
				c.report(h, r)
			},
			state: Unreadable, msg: `status.json is for host "beta"`, exit: ExitFailing,
		},
		{
			name: "unreadable: a newer report format",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				r := applied(v1, sysA, ago(time.Minute))
				r.Format = 2
				c.report(h, r)
			},
			state: Unreadable, msg: "format 2 is not 1", exit: ExitFailing,
		},
		{
			name: "unreadable: no time",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				c.raw(h, manifest.StatusFile, []byte(`{"format": 1, "appliedVersion": "x"}`))
			},
			state: Unreadable, msg: "neither finishedAt nor startedAt", exit: ExitFailing,
		},
		{
			name: "unreadable: a FIFO does not hang status",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				if err := syscall.Mkfifo(filepath.Join(c.root, h, manifest.StatusFile), 0o644); err != nil {
					c.t.Fatal(err)
				}
			},
			state: Unreadable, msg: "reports/status.json is not a regular file", exit: ExitFailing,
		},
		{
			name: "unreadable: a symlink out of the chroot is not followed",
			setup: func(c chroot) {
				c.publish(h, v1, ago(time.Hour), sysA)
				secret := filepath.Join(c.root, "secret.json")
				c.json("", "secret.json", applied(v1, sysA, ago(time.Minute)))
				if err := os.Symlink(secret, filepath.Join(c.root, h, manifest.StatusFile)); err != nil {
					c.t.Fatal(err)
				}
			},
			state: Unreadable, msg: "unreadable report: reports/status.json: path escapes from parent", exit: ExitFailing,
		},
		{
			name: "unreadable: reports is a file",
			setup: func(c chroot) {
				c.raw(h, manifest.ManifestFile, nil)
				c.publish(h, v1, ago(time.Hour), sysA)
				os.RemoveAll(filepath.Join(c.root, h, manifest.ReportsDir))
				c.raw(h, manifest.ReportsDir, []byte("x"))
			},
			state: Unreadable, msg: "reports/status.json: not a directory", exit: ExitFailing,
		},
		{
			name: "unreadable manifest",
			setup: func(c chroot) {
				c.raw(h, manifest.ManifestFile, []byte(`{"format": 1, "version": ["x"]}`))
			},
			state: Unreadable, msg: "unreadable manifest: manifest.json: version is an array, not a string", exit: ExitFailing,
		},
		{
			name: "manifest of a newer bento",
			setup: func(c chroot) {
				c.raw(h, manifest.ManifestFile, []byte(`{"format": 7, "version": "x"}`))
			},
			state: Unreadable, msg: "manifest.json: format 7 is not one this bento reads (1 to 2)", exit: ExitFailing,
		},
		{
			name: "hostile escape sequences never reach the table",
			setup: func(c chroot) {
				c.publish(h, v2, ago(time.Hour), sysA)
				r := applied(v1, sysA, ago(time.Minute))
				r.AttemptedVersion, r.Result, r.Error = v2, manifest.ResultFailure, "\x1b]52;c;ZWNobyBwd25lZA==\x07boom\x1b[2J\r\nagain"
				c.report(h, r)
			},
			state: Failing, msg: "]52;c;ZWNobyBwd25lZA== boom [2J again", exit: ExitFailing,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newChroot(t)
			tc.setup(c)
			s, err := Collect(context.Background(), Options{Root: c.root, Fleet: tc.fleet, EvalErrors: tc.evalFx, Builds: tc.builds, Now: now, StaleAfter: tc.stale})
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Hosts) != 1 {
				t.Fatalf("want one row for %s, got %+v", h, s.Hosts)
			}
			r := s.Hosts[0]
			if r.State != tc.state {
				t.Errorf("state = %s, want %s (message %q)", r.State, tc.state, r.Message)
			}
			if !strings.Contains(r.Message, tc.msg) {
				t.Errorf("message = %q, want it to contain %q", r.Message, tc.msg)
			}
			if strings.ContainsAny(r.Message, "\x1b\r\n\x07") {
				t.Errorf("message %q holds control characters", r.Message)
			}
			if s.ExitCode != tc.exit {
				t.Errorf("exit code = %d, want %d", s.ExitCode, tc.exit)
			}
		})
	}
}

// TestExitCodeIsTheWorstState checks the documented precedence on a mixed
// fleet: failing beats silent beats pending beats up to date.
func TestExitCodeIsTheWorstState(t *testing.T) {
	c := newChroot(t)
	c.publish("ok", v1, now.Add(-time.Hour), sysA)
	c.report("ok", applied(v1, sysA, now.Add(-time.Minute)))
	collect := func() int {
		t.Helper()
		s, err := Collect(context.Background(), Options{Root: c.root, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return s.ExitCode
	}
	steps := []struct {
		add  func()
		want int
	}{
		{func() {}, ExitUpToDate},
		{func() {
			c.publish("new", v2, now.Add(-time.Minute), sysB)
			c.report("new", applied(v1, sysA, now.Add(-time.Minute)))
		}, ExitPending},
		{func() { c.publish("quiet", v1, now.Add(-time.Minute), sysA) }, ExitSilent},
		{func() {
			c.publish("bad", v1, now.Add(-time.Minute), sysA)
			c.report("bad", applied(v1, sysB, now.Add(-time.Minute)))
		}, ExitFailing},
	}
	for i, st := range steps {
		st.add()
		if got := collect(); got != st.want {
			t.Errorf("step %d: exit code %d, want %d", i, got, st.want)
		}
	}
}

func TestSelectionAndSorting(t *testing.T) {
	c := newChroot(t)
	for _, h := range []string{"web-1", "web-2", "db"} {
		c.publish(h, v1, now.Add(-time.Hour), sysA)
	}
	c.report("web-1", applied(v1, sysA, now.Add(-time.Minute)))
	c.report("db", applied(v1, sysB, now.Add(-2*time.Minute)))
	// Junk in the root is no host: a file, a dot-directory, an empty directory.
	c.raw("", ".bento-deploy.lock", nil)
	os.MkdirAll(filepath.Join(c.root, ".cache"), 0o755)
	os.MkdirAll(filepath.Join(c.root, "lost+found"), 0o755)
	os.MkdirAll(filepath.Join(c.root, "empty"), 0o755)

	names := func(s *Snapshot) string {
		var ns []string
		for _, r := range s.Hosts {
			ns = append(ns, r.Host)
		}
		return strings.Join(ns, " ")
	}
	tests := []struct {
		sel  []string
		sort string
		want string
		err  string
	}{
		{want: "db web-2 web-1"}, // drift, never-seen, up-to-date
		{sort: "name", want: "db web-1 web-2"},
		{sort: "seen", want: "web-2 db web-1"},
		{sel: []string{"web-*"}, want: "web-2 web-1"},
		{sel: []string{"db", "web-1"}, sort: "name", want: "db web-1"},
		{sel: []string{"nope"}, err: `host selection "nope" matches no host`},
		{sel: []string{"@prod"}, err: "selecting by tag needs the flake's options; drop --no-eval"},
		{sort: "size", err: `--sort "size": sort by state, name, seen or published`},
	}
	for _, tc := range tests {
		s, err := Collect(context.Background(), Options{Root: c.root, Now: now, Select: tc.sel, Sort: tc.sort})
		if tc.err != "" {
			var ue *UsageError
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.As(err, &ue) {
				t.Errorf("select %v sort %q: error %v, want a usage error with %q", tc.sel, tc.sort, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := names(s); got != tc.want {
			t.Errorf("select %v sort %q: hosts %q, want %q", tc.sel, tc.sort, got, tc.want)
		}
	}
}

func TestFleetAndChrootTogether(t *testing.T) {
	c := newChroot(t)
	c.publish("web", v1, now.Add(-time.Hour), sysA)
	c.report("web", applied(v1, sysA, now.Add(-time.Minute)))
	c.publish("gone", v1, now.Add(-time.Hour), sysA)
	f := &fleet.Fleet{Ref: "/fleet", Hosts: []fleet.Host{
		managed("web", "*:0/15"),
		managed("fresh", ""),
		{Name: "laptop", Managed: false, Options: fleet.Options{Tags: []string{"home"}}},
	}}
	f.Hosts[0].Options.Tags = []string{"prod"}
	s, err := Collect(context.Background(), Options{Root: c.root, Fleet: f, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]State{}
	for _, r := range s.Hosts {
		got[r.Host] = r.State
	}
	want := map[string]State{"web": UpToDate, "fresh": Unpublished, "laptop": NotManaged, "gone": Removed}
	for h, st := range want {
		if got[h] != st {
			t.Errorf("%s: %s, want %s", h, got[h], st)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	if r := rowsByHost(s)["web"]; r.StaleAfterSeconds != 45*60 || r.InFlake == nil || !*r.InFlake {
		t.Errorf("web: stale after %ds, in flake %v; want 2700s (3 × 15 min), true", r.StaleAfterSeconds, r.InFlake)
	}
	if s.Flake != "/fleet" {
		t.Errorf("flake %q", s.Flake)
	}
	// Tags select with the flake; removed hosts are selectable by name.
	for sel, want := range map[string]string{"@prod": "web", "gone": "gone", "@home": "laptop"} {
		s, err := Collect(context.Background(), Options{Root: c.root, Fleet: f, Now: now, Select: []string{sel}})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Hosts) != 1 || s.Hosts[0].Host != want {
			t.Errorf("select %s: %+v, want %s", sel, s.Hosts, want)
		}
	}
}

func TestMissingRoot(t *testing.T) {
	_, err := Collect(context.Background(), Options{Root: filepath.Join(t.TempDir(), "nope"), Now: now})
	if !errors.Is(err, ErrNoRoot) || !strings.Contains(err.Error(), "--chroot-root") {
		t.Fatalf("error %v, want ErrNoRoot naming --chroot-root", err)
	}
	s, err := Collect(context.Background(), Options{Root: t.TempDir(), Now: now})
	if err != nil || len(s.Hosts) != 0 || s.ExitCode != 0 {
		t.Fatalf("empty root: %+v, %v", s, err)
	}
}

func TestManifestIntervalWithoutTheFlake(t *testing.T) {
	c := newChroot(t)
	c.json("pi", manifest.ManifestFile, map[string]any{"format": 1, "host": "pi", "version": v1, "publishedAt": now.Add(-time.Hour), "interval": "hourly"})
	c.report("pi", applied(v1, "", now.Add(-2*time.Hour)))
	s, err := Collect(context.Background(), Options{Root: c.root, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if r := s.Hosts[0]; r.State != UpToDate || r.StaleAfterSeconds != 3*3600 {
		t.Errorf("state %s, stale after %ds; want up-to-date, 10800s", r.State, r.StaleAfterSeconds)
	}
}

func TestAgo(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Minute:                    "0s",
		0:                               "0s",
		45 * time.Second:                "45s",
		3*time.Minute + 59*time.Second:  "3m59s",
		time.Hour:                       "1h",
		2*time.Hour + 5*time.Minute:     "2h05m",
		23*time.Hour + 59*time.Minute:   "23h59m",
		4*24*time.Hour + 7*time.Hour:    "4d07h",
		400 * 24 * time.Hour:            "400d",
		59*time.Minute + 59*time.Second: "59m59s",
	} {
		if got := Ago(d); got != want {
			t.Errorf("Ago(%s) = %q, want %q", d, got, want)
		}
	}
}
