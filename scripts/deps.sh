#!/usr/bin/env bash
# Installs what bento's demo and tests need on a Debian machine, when missing:
# Nix (Debian's nix-bin), OpenSSH's server, git, rsync, age (secrets), gcc
# (cgo, for go test -race) and chromium (serve's browser test, headless). Go 1.26 must already be on PATH (https://go.dev/dl).
# Idempotent; needs root to install.
set -euo pipefail

missing=()
command -v nix >/dev/null 2>&1 || missing+=(nix-bin)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v age >/dev/null 2>&1 || missing+=(age)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v go >/dev/null 2>&1 || { echo "bento needs Go 1.26 on PATH (https://go.dev/dl)" >&2; exit 1; }
mkdir -p /run/sshd 2>/dev/null || true
