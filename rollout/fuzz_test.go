package rollout

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// Whatever a host writes as its report, judging it never panics and its
// detail (printed by bento rollout status) stays one bounded line.
func FuzzJudgeReport(f *testing.F) {
	f.Add([]byte(`{"host":"a","appliedVersion":"1111111111111111","result":"success"}`))
	f.Add([]byte(`{"attemptedVersion":"1111111111111111","result":"rolled-back","rollbackReason":"health-check","health":{"ok":false,"checks":[{"name":"web\u001b[2J","ok":false}]}}`))
	f.Add([]byte(`{"attemptedVersion":"1111111111111111","result":"failure","error":"` + strings.Repeat("x\n", 400) + `"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Report
		if json.Unmarshal(data, &r) != nil {
			return
		}
		state, detail := JudgeHost("1111111111111111", &r, nil)
		if state == "" {
			t.Fatal("no verdict")
		}
		if strings.ContainsAny(detail, "\n\r\x1b") || utf8.RuneCountInString(detail) > 400 {
			t.Fatalf("detail %q is not one bounded line", detail)
		}
	})
}
