// Package bytesize prints byte counts for people.
package bytesize

import "fmt"

// Format prints n in the largest binary unit (up to GiB) that keeps it at
// least 1, with one decimal: "512 B", "1.5 KiB", "3.0 GiB".
func Format(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
