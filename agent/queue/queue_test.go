package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/bento-nix/bento/manifest"
)

func rep(v string) manifest.Report {
	return manifest.Report{Format: manifest.Format, Host: "alpha", AttemptedVersion: v, Result: manifest.ResultFailure}
}

func versions(t *testing.T, q *Queue) string {
	t.Helper()
	es, err := q.List()
	if err != nil {
		t.Fatal(err)
	}
	var vs []string
	for _, e := range es {
		vs = append(vs, e.Report.AttemptedVersion)
	}
	return fmt.Sprint(vs)
}

func TestPutListDoneKeepsOrderAndLogs(t *testing.T) {
	q := &Queue{Dir: filepath.Join(t.TempDir(), "queue")}
	if got := versions(t, q); got != "[]" {
		t.Fatalf("empty queue lists %s", got)
	}
	for i, v := range []string{"v1", "v2", "v3"} {
		var log []byte
		if i != 1 {
			log = []byte("log of " + v)
		}
		if _, err := q.Put(rep(v), v+".log.gz", log); err != nil {
			t.Fatal(err)
		}
	}
	if got := versions(t, q); got != "[v1 v2 v3]" {
		t.Fatalf("queue order %s, want [v1 v2 v3]", got)
	}
	es, _ := q.List()
	for _, e := range es {
		log, err := q.Log(e)
		if err != nil {
			t.Fatal(err)
		}
		want := "log of " + e.Report.AttemptedVersion
		if e.Report.AttemptedVersion == "v2" {
			want = ""
		}
		if string(log) != want || e.LogName != e.Report.AttemptedVersion+".log.gz" {
			t.Errorf("entry %s: log %q name %q", e.Report.AttemptedVersion, log, e.LogName)
		}
	}
	if err := q.Done(es[0]); err != nil {
		t.Fatal(err)
	}
	// A new entry goes after the others even once the first is gone.
	if _, err := q.Put(rep("v4"), "", nil); err != nil {
		t.Fatal(err)
	}
	if got := versions(t, q); got != "[v2 v3 v4]" {
		t.Fatalf("after Done and Put: %s, want [v2 v3 v4]", got)
	}
}

func TestLeftoversOfAKilledAgentAreCleaned(t *testing.T) {
	q := &Queue{Dir: t.TempDir()}
	if _, err := q.Put(rep("v1"), "v1.log.gz", []byte("log")); err != nil {
		t.Fatal(err)
	}
	// Killed after writing the log of entry 2, before its entry; and a
	// temporary file from a write that never finished.
	os.WriteFile(filepath.Join(q.Dir, "000000000002.log"), []byte("orphan"), 0o600)
	os.WriteFile(filepath.Join(q.Dir, ".000000000003.json.tmp-1"), []byte("{"), 0o600)
	// Damage from outside must not block delivery of the rest.
	os.WriteFile(filepath.Join(q.Dir, "000000000000.json"), []byte("garbage"), 0o600)
	if got := versions(t, q); got != "[v1]" {
		t.Fatalf("queue %s, want [v1]", got)
	}
	des, _ := os.ReadDir(q.Dir)
	var names []string
	for _, d := range des {
		names = append(names, d.Name())
	}
	if fmt.Sprint(names) != "[000000000001.json 000000000001.log]" {
		t.Errorf("files left: %v", names)
	}
}

func TestMaxDropsOldest(t *testing.T) {
	q := &Queue{Dir: t.TempDir(), Max: 2}
	for _, v := range []string{"v1", "v2", "v3"} {
		if _, err := q.Put(rep(v), "", []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if got := versions(t, q); got != "[v2 v3]" {
		t.Fatalf("queue %s, want the newest two [v2 v3]", got)
	}
	if _, err := os.Stat(filepath.Join(q.Dir, "000000000001.log")); !os.IsNotExist(err) {
		t.Error("the dropped entry's log is still there")
	}
}
