package sshdtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// owner is what a Server made, saved in its state directory so that the
// reaper can undo it if the test binary dies before its cleanups run.
type owner struct {
	PID     int      `json:"pid"`
	PIDNS   string   `json:"pidns"`
	SSHDPID int      `json:"sshdPid,omitempty"`
	Config  string   `json:"config"`
	Group   string   `json:"group,omitempty"` // only a group this Server created
	Users   []string `json:"users,omitempty"`
	Dirs    []string `json:"dirs,omitempty"` // outside the state directory
}

func (s *Server) saveOwner(t testing.TB) {
	s.mu.Lock()
	b, err := json.Marshal(s.own)
	s.mu.Unlock()
	if err == nil {
		tmp := filepath.Join(s.base, "owner.json.tmp")
		if err = os.WriteFile(tmp, b, 0o644); err == nil {
			err = os.Rename(tmp, filepath.Join(s.base, "owner.json"))
		}
	}
	if err != nil && t != nil {
		t.Fatalf("sshdtest: recording what this server made: %v", err)
	}
}

// undo removes the group and directories recorded in o. Users are removed
// by the caller first, since a group cannot go while it is a user's primary
// group.
func undo(o owner) error {
	var errs []error
	if o.Group != "" {
		code, out, err := accountTool("groupdel", o.Group)
		if err != nil && code != 6 { // 6: no such group
			errs = append(errs, fmt.Errorf("groupdel %s: %v: %s", o.Group, err, out))
		}
	}
	for i := len(o.Dirs) - 1; i >= 0; i-- {
		if err := os.RemoveAll(o.Dirs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

var reapOnce sync.Once

// reapStale undoes what Servers of dead test binaries left behind. Only
// processes of our own PID namespace are judged, since a PID from another
// namespace says nothing about whether its owner is alive.
func reapStale(t testing.TB) {
	matches, _ := filepath.Glob(filepath.Join(stateParent, statePrefix+"*", "owner.json"))
	ns := pidNamespace()
	for _, m := range matches {
		o, ok := deadOwner(m, ns)
		if !ok {
			continue
		}
		if err := reap(o, filepath.Dir(m)); err != nil {
			t.Logf("sshdtest: reaping %s left by dead process %d: %v", filepath.Dir(m), o.PID, err)
		} else {
			t.Logf("sshdtest: reaped %s left by dead process %d", filepath.Dir(m), o.PID)
		}
	}
}

// deadOwner reads an owner record and says whether it is of a dead
// process of namespace ns.
func deadOwner(file, ns string) (owner, bool) {
	var o owner
	b, err := os.ReadFile(file)
	if err != nil || json.Unmarshal(b, &o) != nil {
		return o, false
	}
	return o, o.PIDNS == ns && o.PID > 0 && !processAlive(o.PID)
}

// reap stops the dead owner's sshd, removes its users and undoes its
// changes, then removes its state directory.
func reap(o owner, dir string) error {
	if o.SSHDPID > 0 {
		// The PID may have been reused; only kill an sshd running our config.
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", o.SSHDPID)); err == nil &&
			bytes.Contains(cmdline, []byte(o.Config)) {
			killTree(o.SSHDPID)
		}
	}
	var errs []error
	for _, u := range o.Users {
		errs = append(errs, deleteUser(u))
	}
	errs = append(errs, undo(o), os.RemoveAll(dir))
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func pidNamespace() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// killTree freezes pid and all its descendants with SIGSTOP, rereading
// /proc until no new child appears, then SIGKILLs them all. Freezing first
// means nothing forks a new connection handler between the scan and the kill.
func killTree(pid int) {
	frozen := map[int]bool{}
	pending := []int{pid}
	for len(pending) > 0 {
		for _, p := range pending {
			syscall.Kill(p, syscall.SIGSTOP)
			frozen[p] = true
		}
		pending = pending[:0]
		for child, parent := range processParents() {
			if frozen[parent] && !frozen[child] {
				pending = append(pending, child)
			}
		}
	}
	for p := range frozen {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

// processParents maps every PID to its parent's PID.
func processParents() map[int]int {
	parents := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may contain spaces and parentheses; the fields
		// after the last ")" are "state ppid ...".
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			parents[pid] = ppid
		}
	}
	return parents
}
