package logs

import "fmt"

// humanBytes is status's byte count format (64.0 MiB), for the limit in
// ErrTooBig's message. The wave3-ci branch replaces both copies with
// internal/bytesize.Format; this file goes when that lands.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
