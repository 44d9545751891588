#!/usr/bin/env bash
# bento's main job on the example fleet, on this machine, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nwarn-dirty = false'
go build -o .bench/bento ./cmd/bento
echo "\$ bento hosts --flake examples/fleet"
.bench/bento hosts --flake examples/fleet
