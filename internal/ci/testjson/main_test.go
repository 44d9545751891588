package main

import (
	"strings"
	"testing"
)

const stream = `{"Action":"start","Package":"github.com/bento-nix/bento/nixtest"}
{"Action":"run","Package":"github.com/bento-nix/bento/nixtest","Test":"TestVM"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Test":"TestVM","Output":"=== RUN   TestVM\n"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Test":"TestVM","Output":"    vm_test.go:9: needs KVM\n"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Test":"TestVM","Output":"--- SKIP: TestVM (0.00s)\n"}
{"Action":"skip","Package":"github.com/bento-nix/bento/nixtest","Test":"TestVM"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Test":"TestQuiet/case","Output":"    x_test.go:3: no user nobody\n"}
{"Action":"skip","Package":"github.com/bento-nix/bento/nixtest","Test":"TestQuiet/case"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Test":"TestOK","Output":"noise of a passing test\n"}
{"Action":"pass","Package":"github.com/bento-nix/bento/nixtest","Test":"TestOK"}
{"Action":"pass","Package":"github.com/bento-nix/bento/nixtest","Test":"FuzzParse"}
{"Action":"pass","Package":"github.com/bento-nix/bento/nixtest","Test":"FuzzParse/seed#0"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Output":"PASS\n"}
{"Action":"output","Package":"github.com/bento-nix/bento/nixtest","Output":"ok  \tgithub.com/bento-nix/bento/nixtest\t1.0s\n"}
{"Action":"pass","Package":"github.com/bento-nix/bento/nixtest"}
{"Action":"output","Package":"github.com/bento-nix/bento/publish","Test":"TestBroken","Output":"    publish_test.go:1: lost the old publication\n"}
{"Action":"fail","Package":"github.com/bento-nix/bento/publish","Test":"TestBroken"}
{"Action":"fail","Package":"github.com/bento-nix/bento/publish"}
`

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allow   string
		stream  string
		bad     []string // "pkg test" of the skips not allowed
		failed  bool
		outHas  []string
		outLack []string
	}{
		{
			name:    "nothing allowed",
			stream:  stream,
			bad:     []string{"nixtest TestQuiet/case", "nixtest TestVM"},
			failed:  true,
			outHas:  []string{"lost the old publication", "ok  \tgithub.com/bento-nix/bento/nixtest"},
			outLack: []string{"noise of a passing test", "needs KVM", "PASS"},
		},
		{
			name:   "the VM test allowed, with its reason",
			allow:  "# comment\nnixtest TestVM the NixOS VM tests need KVM\n",
			stream: stream,
			bad:    []string{"nixtest TestQuiet/case"},
			failed: true,
		},
		{
			name:   "a regexp covers subtests; another package's entry does not count",
			allow:  "nixtest TestVM|TestQuiet/.* stand-ins\npublish TestVM wrong package\n",
			stream: stream,
			failed: true,
		},
		{
			name:   "all pass",
			stream: `{"Action":"pass","Package":"github.com/bento-nix/bento/fleet","Test":"TestA"}` + "\n",
		},
		{
			name:   "a build failure fails the run",
			stream: `{"Action":"build-output","ImportPath":"github.com/bento-nix/bento/fleet","Output":"fleet.go:1: syntax error\n"}` + "\n" + `{"Action":"build-fail","ImportPath":"github.com/bento-nix/bento/fleet"}` + "\n",
			failed: true,
			outHas: []string{"syntax error"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allow, err := parseAllow(strings.NewReader(tc.allow), "skips")
			if err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			res, err := run(strings.NewReader(tc.stream), &out)
			if err != nil {
				t.Fatal(err)
			}
			var bad []string
			for _, s := range res.check(allow) {
				bad = append(bad, s.pkg+" "+s.test)
			}
			if strings.Join(bad, ",") != strings.Join(tc.bad, ",") {
				t.Errorf("skips not allowed: %v, want %v", bad, tc.bad)
			}
			if res.failed != tc.failed {
				t.Errorf("failed = %v, want %v", res.failed, tc.failed)
			}
			for _, s := range tc.outHas {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tc.outLack {
				if strings.Contains(out.String(), s) {
					t.Errorf("output shows %q:\n%s", s, out.String())
				}
			}
		})
	}
	res, _ := run(strings.NewReader(stream), &strings.Builder{})
	if res.fuzzSeeds != 1 || res.skips[0].reason != "vm_test.go:9: needs KVM" {
		t.Errorf("fuzz targets %d, first skip's reason %q", res.fuzzSeeds, res.skips[0].reason)
	}
}

func TestParseAllowWantsReasons(t *testing.T) {
	for _, in := range []string{"nixtest TestVM\n", "nixtest TestVM(\n reason"} {
		if _, err := parseAllow(strings.NewReader(in), "skips"); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}
