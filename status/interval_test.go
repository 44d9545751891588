package status

import (
	"testing"
	"time"
)

func TestPollInterval(t *testing.T) {
	tests := []struct {
		spec string
		want time.Duration // 0: unknown
	}{
		{"", 0},
		{"hourly", time.Hour},
		{"Daily", 24 * time.Hour},
		{"minutely", time.Minute},
		{"15min", 15 * time.Minute},
		{"1h 30min", 90 * time.Minute},
		{"2d4h", 52 * time.Hour},
		{"90", 90 * time.Second},
		{"*:0/15", 15 * time.Minute},
		{"*:00/5", 5 * time.Minute},
		{"*-*-* *:0/15:00", 15 * time.Minute},
		{"*:0,10,40", 30 * time.Minute},
		{"*:07", time.Hour},
		{"04:00", 24 * time.Hour},
		{"*-*-* 04:00:00", 24 * time.Hour},
		{"0/2:00", 2 * time.Hour},
		{"*/2:0/15", time.Hour + 15*time.Minute},
		{"8..18:0/15", 13*time.Hour + 15*time.Minute},
		{"0..23:0,5", 55 * time.Minute},
		{"Mon *-*-* 04:00", 0},
		{"*:0/0", 0},
		{"*:50/5", 55 * time.Minute}, // 50, 55, then 50 of the next hour
		{"*:10..40/15", 30 * time.Minute},
		{"*:40..10", 0},
		{"*:x/5", 0},
		{"*:0..x", 0},
		{"25:00", 0},
		{"soon", 0},
		{"5 parsecs", 0},
	}
	for _, tc := range tests {
		got, ok := PollInterval(tc.spec)
		if (tc.want == 0) == ok || got != tc.want {
			t.Errorf("PollInterval(%q) = %s, %v; want %s", tc.spec, got, ok, tc.want)
		}
	}
}
