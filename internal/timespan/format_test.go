package timespan

import (
	"testing"
	"time"
)

func TestHuman(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{-time.Minute, "0s"},
		{0, "0s"},
		{850 * time.Millisecond, "850ms"},
		{1234 * time.Millisecond, "1.2s"},
		{9960 * time.Millisecond, "10s"},
		{12340 * time.Millisecond, "12s"},
		{45 * time.Second, "45s"},
		{59600 * time.Millisecond, "1m"},
		{3 * time.Minute, "3m"},
		{185 * time.Second, "3m05s"},
		{3*time.Minute + 59*time.Second, "3m59s"},
		{59*time.Minute + 59*time.Second + 600*time.Millisecond, "1h"},
		{62 * time.Minute, "1h02m"},
		{2*time.Hour + 5*time.Minute, "2h05m"},
		{23*time.Hour + 59*time.Minute + 40*time.Second, "1d"},
		{4*24*time.Hour + 7*time.Hour, "4d07h"},
		{400 * 24 * time.Hour, "400d"},
	} {
		got := Human(tc.d)
		if got != tc.want {
			t.Errorf("Human(%v) = %q, want %q", tc.d, got, tc.want)
		}
		// What is shown can be given back to a flag.
		if back, err := Parse(got); err != nil || (tc.d > 0 && (back-tc.d > tc.d/10+time.Second || tc.d-back > tc.d/10+time.Second)) {
			t.Errorf("Parse(Human(%v) = %q) = %v, %v", tc.d, got, back, err)
		}
	}
}
