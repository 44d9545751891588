#!/usr/bin/env bash
# Runs bento's whole test suite against real Nix and a real sshd.
# Installs what it needs first (scripts/deps.sh). Tests that start sshd or
# create chroot users need root, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

# Tests run Nix offline: flakes on, no sandbox (builders use /bin/sh), no
# substituters (there is no network).
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nwarn-dirty = false'

echo "== go vet"
go vet ./...
echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
echo "== go test"
go test -count=1 -timeout 25m ./...
# Each fuzz target runs briefly on top of its seed corpus (which go test
# above already replays): "package target" pairs.
echo "== fuzz"
for pair in "manifest FuzzParse" "internal/termsafe FuzzSanitize" "status FuzzParseReport" \
	"cache/narinfo FuzzParse" "agent FuzzParseHead" "agent/transport FuzzParseHostKeys"; do
	set -- $pair
	go test -run='^$' -fuzz="^$2\$" -fuzztime=3s "./$1"
done
