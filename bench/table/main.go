// Command table runs the benchmarks behind the performance table (issue 21)
// one after the other and prints that table: each row is one benchmark's
// "table:" line, with its anchor measured in the same run by that benchmark
// itself (nothing here is a figure from elsewhere). Each benchmark's full
// output goes to stderr, so the table on stdout can be kept apart.
//
//	go run ./bench/table           # the sizes (about 10 minutes here)
//	go run ./bench/table -quick    # smaller sizes, to try it
//
// The benchmarks need root and the tools of scripts/deps.sh (sshd, nix).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
)

type bench struct {
	pkg         string
	full, quick []string
}

func main() {
	quick := flag.Bool("quick", false, "smaller sizes (minutes instead of ten)")
	flag.Parse()
	benches := []bench{
		{"./bench/eval", []string{"-hosts", "300", "-cost", "200000"}, []string{"-hosts", "100", "-cost", "100000", "-rounds", "2"}},
		{"./bench/build", []string{"-hosts", "50", "-seconds", "1"}, []string{"-hosts", "20", "-seconds", "1", "-rounds", "1"}},
		{"./bench/deploy/unchanged", nil, []string{"-hosts", "20", "-rounds", "3"}},
		{"./bench/agent", []string{"-idle", "9", "-updates", "3"}, []string{"-idle", "5", "-updates", "1"}},
		{"./bench/burst", []string{"-ticks", "1000", "-max-startups", "10:30:100,sized"}, []string{"-ticks", "200", "-users", "20", "-max-startups", "10:30:100,sized"}},
		{"./bench/watch", []string{"-hosts", "1000", "-users", "20", "-window", "20s"}, []string{"-hosts", "100", "-window", "10s"}},
	}
	var rows [][]string
	failed := 0
	for _, b := range benches {
		args := b.full
		if *quick {
			args = b.quick
		}
		fmt.Fprintf(os.Stderr, "\n== go run %s %s\n", b.pkg, strings.Join(args, " "))
		row, err := run(context.Background(), b.pkg, args)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench/table: %s: %v\n", b.pkg, err)
			failed++
			rows = append(rows, []string{b.pkg, "-", "failed: " + err.Error(), "-"})
			continue
		}
		rows = append(rows, row)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "FIGURE\tANCHOR (same run)\tBENTO\tGOAL")
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
	if failed > 0 {
		os.Exit(1)
	}
}

// run runs one benchmark, copying its output to stderr, and returns the
// fields of its "table:" line.
func run(ctx context.Context, pkg string, args []string) ([]string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", pkg}, args...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var row []string
	sc := bufio.NewScanner(io.TeeReader(out, os.Stderr))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "table: "); ok {
			row = strings.Split(rest, "\t")
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, err
	}
	if len(row) != 4 {
		return nil, fmt.Errorf("printed no table line (\"table: figure<TAB>anchor<TAB>bento<TAB>goal\")")
	}
	return row, nil
}
