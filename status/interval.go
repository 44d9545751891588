package status

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bento-nix/bento/internal/timespan"
)

// PollInterval tells the longest gap between two polls of a client whose
// schedule is spec: a systemd calendar event (OnCalendar: "*:0/15",
// "hourly", "*-*-* 04:00:00") or a time span ("15min", "1h 30min"). It
// answers false when it cannot tell (weekday or date restrictions, an empty
// spec): the caller then uses a default.
func PollInterval(spec string) (time.Duration, bool) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return 0, false
	}
	if d, ok := shorthand[strings.ToLower(spec)]; ok {
		return d, true
	}
	if d, err := timespan.Parse(spec); err == nil && d > 0 {
		return d, true
	}
	return parseCalendar(spec)
}

var shorthand = map[string]time.Duration{
	"minutely":     time.Minute,
	"hourly":       time.Hour,
	"daily":        24 * time.Hour,
	"weekly":       7 * 24 * time.Hour,
	"monthly":      31 * 24 * time.Hour,
	"quarterly":    92 * 24 * time.Hour,
	"semiannually": 184 * 24 * time.Hour,
	"yearly":       366 * 24 * time.Hour,
	"annually":     366 * 24 * time.Hour,
}

// parseCalendar handles the calendar events a poll schedule uses: an
// optional "*-*-*" date and a time whose hour and minute fields are "*",
// a value, a list "a,b", a range "a..b" or a repetition "a/n".
func parseCalendar(s string) (time.Duration, bool) {
	fields := strings.Fields(s)
	var clock string
	for _, f := range fields {
		switch {
		case strings.Contains(f, ":"):
			clock = f
		case f == "*-*-*":
		default:
			// Weekdays, dates, time zones: too rare for a poll schedule
			// to be worth modelling.
			return 0, false
		}
	}
	if clock == "" {
		return 0, false
	}
	parts := strings.Split(clock, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, false
	}
	hours, ok := values(parts[0], 24)
	if !ok {
		return 0, false
	}
	minutes, ok := values(parts[1], 60)
	if !ok {
		return 0, false
	}
	if len(hours) == 24 {
		return time.Duration(maxGap(minutes, 60)) * time.Minute, true
	}
	// Several minutes within the chosen hours: the longest gap is between
	// the last poll of one chosen hour and the first of the next.
	gap := maxGap(hours, 24)*60 - (minutes[len(minutes)-1] - minutes[0])
	if consecutive(hours) {
		gap = max(gap, maxGap(minutes, 60))
	}
	return time.Duration(gap) * time.Minute, true
}

// values expands one calendar field to the sorted values it matches in
// [0, limit).
func values(field string, limit int) ([]int, bool) {
	set := map[int]bool{}
	for _, item := range strings.Split(field, ",") {
		lo, hi, step, ok := calendarItem(item, limit)
		if !ok {
			return nil, false
		}
		for v := lo; v <= hi; v += step {
			set[v] = true
		}
	}
	out := make([]int, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	slices.Sort(out)
	return out, len(out) > 0
}

// calendarItem reads one item of a field, "*", "a", "a..b", each with an
// optional "/n", as the values lo, lo+step, … up to hi. A value with a
// repetition ("5/15") runs to the end of the field's range.
func calendarItem(item string, limit int) (lo, hi, step int, ok bool) {
	item, step, ok = cutStep(item)
	if !ok {
		return 0, 0, 0, false
	}
	lo, hi = 0, limit-1
	switch a, b, isRange := strings.Cut(item, ".."); {
	case item == "*":
	case isRange:
		var err1, err2 error
		lo, err1 = strconv.Atoi(a)
		hi, err2 = strconv.Atoi(b)
		if err1 != nil || err2 != nil {
			return 0, 0, 0, false
		}
	default:
		n, err := strconv.Atoi(item)
		if err != nil {
			return 0, 0, 0, false
		}
		lo = n
		if step == 0 {
			hi = n
		}
	}
	if lo < 0 || hi >= limit || lo > hi {
		return 0, 0, 0, false
	}
	return lo, hi, max(step, 1), true
}

// cutStep splits "a/n" into a and n (n > 0); an item without "/" has step 0.
func cutStep(item string) (string, int, bool) {
	base, s, found := strings.Cut(item, "/")
	if !found {
		return item, 0, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return "", 0, false
	}
	return base, n, true
}

// maxGap is the longest distance between consecutive values on a cycle of
// length period.
func maxGap(vs []int, period int) int {
	gap := vs[0] + period - vs[len(vs)-1]
	for i := 1; i < len(vs); i++ {
		gap = max(gap, vs[i]-vs[i-1])
	}
	return gap
}

// consecutive tells whether two chosen hours follow each other.
func consecutive(hours []int) bool {
	for i := 1; i < len(hours); i++ {
		if hours[i] == hours[i-1]+1 {
			return true
		}
	}
	return len(hours) > 1 && hours[0] == 0 && hours[len(hours)-1] == 23
}
