#!/usr/bin/env bash
# Runs bento's whole test suite against real Nix and a real sshd, and the
# checks that keep the tree in shape: go vet, gofmt, staticcheck (pinned),
# the import layers (internal/layers, an ordinary test), the race detector
# where it can run, the skip rule (under CI=true a skipped test fails the
# run unless .ci/skips allows it, with a reason) and a short fuzz of every
# fuzz target. Installs what it needs first (scripts/deps.sh). Tests that
# start sshd or create chroot users need root, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

# Tests run Nix offline: flakes on, no sandbox (builders use /bin/sh), no
# substituters (there is no network).
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nwarn-dirty = false'

# Tools the checks use, built here (gitignored), never taken from PATH: the
# version is the one this script names.
tools="$PWD/.ci/bin"
staticcheck_version=v0.8.2
gocyclo_version=v0.6.0
deadcode_version=v0.52.0 # golang.org/x/tools
mkdir -p "$tools"
took=()
stage() { took+=("$1 $((SECONDS - t0))s"); t0=$SECONDS; }
t0=$SECONDS

echo "== go vet"
go vet ./...
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
stage vet+gofmt

echo "== staticcheck $staticcheck_version"
if ! "$tools/staticcheck" -version 2>/dev/null | grep -qF "(${staticcheck_version#v})"; then
	GOBIN="$tools" go install "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version"
fi
"$tools/staticcheck" ./...
stage staticcheck

# Issue 16's bar, kept: no function over complexity 10 outside the tests
# and the frozen format-1 publisher, and nothing the binary cannot reach.
echo "== gocyclo $gocyclo_version, deadcode $deadcode_version"
[ -x "$tools/gocyclo-$gocyclo_version" ] || { GOBIN="$tools" go install "github.com/fzipp/gocyclo/cmd/gocyclo@$gocyclo_version" && mv "$tools/gocyclo" "$tools/gocyclo-$gocyclo_version"; }
[ -x "$tools/deadcode-$deadcode_version" ] || { GOBIN="$tools" go install "golang.org/x/tools/cmd/deadcode@$deadcode_version" && mv "$tools/deadcode" "$tools/deadcode-$deadcode_version"; }
complex=$("$tools/gocyclo-$gocyclo_version" -over 10 -ignore '_test\.go$|^internal/format1/' .)
if [ -n "$complex" ]; then printf 'over complexity 10 (split them by step):\n%s\n' "$complex" >&2; exit 1; fi
dead=$("$tools/deadcode-$deadcode_version" ./cmd/bento)
if [ -n "$dead" ]; then printf 'unreachable from bento (remove it, or move it to an _test.go file):\n%s\n' "$dead" >&2; exit 1; fi
stage gocyclo+deadcode

# The race detector needs cgo and a supported platform: probe it once.
race=()
if CGO_ENABLED=1 go test -race -count=1 -run '^$' ./internal/atomicfile >/dev/null 2>&1; then
	race=(-race)
	export CGO_ENABLED=1
else
	echo "note: the race detector cannot run here (no cgo or an unsupported platform): testing without -race" >&2
fi
stage race-probe

# BENTO_TEST_PACKAGES narrows the run for a developer (CI runs ./...).
packages=${BENTO_TEST_PACKAGES:-./...}
echo "== go test ${race[*]} $packages"
go build -o "$tools/testjson" ./internal/ci/testjson
# shellcheck disable=SC2086 # a list of packages
go test "${race[@]}" -json -count=1 -timeout 25m $packages | "$tools/testjson" -allow .ci/skips
stage "go test"

# Each fuzz target runs briefly on top of its seed corpus (which go test
# above already replays as ordinary tests): every func Fuzz… in a test file.
echo "== fuzz"
targets=$(git grep -Il -e '^func Fuzz' -- '*_test.go' | while read -r f; do
	sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f" | sed "s#^#$(dirname "$f") #"
done)
[ -n "$targets" ] || { echo "no fuzz targets found" >&2; exit 1; }
fuzz() { go test -run='^$' -fuzz="^$2\$" -fuzztime=3s "./$1" 2>&1; }
while read -r pkg target; do
	# Go's fuzzing engine sometimes ends a timed run with "context deadline
	# exceeded" on a loaded machine although nothing failed (no failing
	# input is written): run that target once more. A real finding names
	# its input under testdata/fuzz and fails both times.
	if ! out=$(fuzz "$pkg" "$target"); then
		echo "$out"
		if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
			echo "note: $pkg $target: the fuzzing engine timed out, not the target; running it again" >&2
			fuzz "$pkg" "$target"
		else
			exit 1
		fi
	else
		echo "$out" | tail -2
	fi
done <<<"$targets"
stage fuzz

echo "== took: ${took[*]}; total $SECONDS s"
