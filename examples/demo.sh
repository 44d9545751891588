#!/usr/bin/env bash
# The whole bento loop on this machine, offline, in a throwaway directory,
# in two rounds:
#
#   1. bento deploy   builds the example fleet (a copy in $DEMO/fleet, a git
#                     repository of its own) and publishes one chroot per host
#   2. a real sshd    serves those chroots on 127.0.0.1 (SFTP only, one user per host)
#   3. bento agent    runs once per host, as that host would from its systemd
#                     timer: download, build, switch (into a system root of its own)
#   4. bento status   shows every host up to date
#   5. round two      a change to "broken" fails its activation: its agent
#                     rolls back to round one's system and status says why
#
# It needs root (sshd chroots, per-host users) and cleans up after itself;
# pass --keep to leave everything in $DEMO for a look around, and --clean
# afterwards to remove what a --keep run left.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0 clean=0
case "${1:-}" in
  --keep) keep=1 ;;
  --clean) clean=1 ;;
  "") ;;
  *) echo "demo: unknown argument $1; usage: examples/demo.sh [--keep | --clean]" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it starts sshd with chroots and adds one user per example host)" >&2
  exit 1
fi
[ "$clean" -eq 1 ] || scripts/deps.sh

export NIX_CONFIG=$'experimental-features = nix-command flakes\nsandbox = false\nsubstituters =\nwarn-dirty = false'
# sshd refuses a ChrootDirectory with any group/world-writable or non-root
# component, so the demo lives under /var/lib, not /tmp.
DEMO=/var/lib/bento-demo
PORT=${BENTO_DEMO_PORT:-2222}
GROUP=bento-demo
HOSTS=(web-1 web-2 cupboard-pi broken)
BENTO=$DEMO/bin/bento

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

remove() {
  [ -f "$DEMO/sshd.pid" ] && kill "$(cat "$DEMO/sshd.pid")" 2>/dev/null || true
  for h in "${HOSTS[@]}"; do userdel "bento-$h" 2>/dev/null || true; done
  groupdel "$GROUP" 2>/dev/null || true
  rm -rf "$DEMO"
  echo "demo: stopped sshd, removed the demo users and $DEMO"
}

cleanup() {
  status=$?
  if [ "$keep" -eq 0 ]; then
    remove
  else
    [ -f "$DEMO/sshd.pid" ] && kill "$(cat "$DEMO/sshd.pid")" 2>/dev/null || true
    echo "demo: kept $DEMO (users bento-<host> and group $GROUP stay; examples/demo.sh --clean removes them)"
  fi
  exit $status
}

if [ "$clean" -eq 1 ]; then
  remove
  exit 0
fi

rm -rf "$DEMO"
mkdir -p "$DEMO/bin" "$DEMO/keys" /run/sshd
chmod 755 "$DEMO"
trap cleanup EXIT
go build -o "$BENTO" ./cmd/bento
# The fleet is a git repository of its own, as yours is: round two commits
# a change to it.
FLEET=$DEMO/fleet
cp -r examples/fleet "$FLEET"
git() { command git -C "$FLEET" -c user.name=demo -c user.email=demo@example.invalid "$@"; }
git init -q && git add -A && git commit -qm "round one: a good version everywhere"

say "1. The fleet: one flake, four hosts"
run "$BENTO" hosts --flake "$FLEET"

say "2. Server: one SFTP user per host (the server module does this in production)"
groupadd -f "$GROUP"
for h in "${HOSTS[@]}"; do
  id "bento-$h" >/dev/null 2>&1 || useradd --system --no-create-home --home-dir "$DEMO/chroot/$h" \
    --gid "$GROUP" --shell /usr/sbin/nologin --password '*' "bento-$h"
  ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$DEMO/keys/$h"
  cp "$DEMO/keys/$h.pub" "$DEMO/keys/authorized-bento-$h"
  echo "  user bento-$h, key $DEMO/keys/$h"
done

say "3. Server: bento deploy builds every host and publishes its chroot"
# The example hosts do not name their SFTP users (they default to the host
# name); the demo's users are prefixed, so it skips the user check and hands
# each reports/ directory to its user afterwards.
deploy() {
  set +e
  run "$BENTO" deploy --flake "$FLEET" --chroot-root "$DEMO/chroot" --state-dir "$DEMO/server" --no-user-check
  set -e
  for h in "${HOSTS[@]}"; do chown "bento-$h:$GROUP" "$DEMO/chroot/$h/reports"; done
}
deploy
run ls "$DEMO/chroot/web-1" "$DEMO/chroot/web-1/objects"

say "4. Server: sshd serves each chroot to its host only (SFTP, no shell, no forwarding)"
ssh-keygen -q -t ed25519 -N '' -f "$DEMO/ssh_host_ed25519_key"
cat > "$DEMO/sshd_config" <<CFG
ListenAddress 127.0.0.1
Port $PORT
HostKey $DEMO/ssh_host_ed25519_key
PidFile $DEMO/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AuthorizedKeysFile $DEMO/keys/authorized-%u
AllowGroups $GROUP
Subsystem sftp internal-sftp
Match Group $GROUP
  ChrootDirectory %h
  ForceCommand internal-sftp
  AllowTcpForwarding no
  AllowStreamLocalForwarding no
  X11Forwarding no
  PermitTTY no
  PermitTunnel no
  AllowAgentForwarding no
CFG
/usr/sbin/sshd -t -f "$DEMO/sshd_config"
/usr/sbin/sshd -f "$DEMO/sshd_config" -E "$DEMO/sshd.log"
for _ in $(seq 50); do [ -f "$DEMO/sshd.pid" ] && break; sleep 0.1; done
echo "  sshd listens on 127.0.0.1:$PORT"
HOSTKEY=$(cut -d' ' -f1,2 "$DEMO/ssh_host_ed25519_key.pub")

# One tick of each host's agent, as its systemd timer runs it.
ticks() {
  for h in "${HOSTS[@]}"; do
    root="$DEMO/hosts/$h"
    mkdir -p "$root/profiles"
    printf '$ bento agent run --host %s …\n' "$h"
    set +e
    progress="$DEMO/chroot/$h/reports/progress.json"
    rm -f "$progress"
    BENTO_DEMO_CURRENT_SYSTEM="$root/current-system" "$BENTO" agent run \
      --host "$h" --server 127.0.0.1 --port "$PORT" --user "bento-$h" \
      --identity-file "$DEMO/keys/$h" --server-host-key "$HOSTKEY" \
      --state-dir "$root/state" --profile "$root/profiles/system" \
      --current-system "$root/current-system" --booted-system "$root/booted-system" \
      --reboot-command "/bin/echo would reboot" > "$DEMO/tick.log" 2>&1 &
    tick=$!
    # A tick that takes a while uploads its stage as it goes (after 2 s):
    # the server sees it before the report.
    while kill -0 "$tick" 2>/dev/null && [ ! -s "$progress" ]; do sleep 0.1; done
    if kill -0 "$tick" 2>/dev/null; then
      echo "    … while it runs, on the server (live progress):"
      "$BENTO" status --no-eval --chroot-root "$DEMO/chroot" "$h" 2>&1 | sed 's/^/    | /'
    fi
    wait "$tick"
    code=$?
    sed 's/^/    /' "$DEMO/tick.log"
    echo "    (exit $code)"
    set -e
  done
}

show_status() {
  set +e
  run "$BENTO" status --flake "$FLEET" --chroot-root "$DEMO/chroot" --state-dir "$DEMO/server"
  code=$?
  set -e
}

say "5. Clients: each host runs one tick of bento agent (its systemd timer does, every ~10 min)"
ticks

say "6. Server: bento status (round one: a good version everywhere)"
show_status
echo "(bento status exited $code)"

say "7. Round two: a change that breaks the activation of \"broken\" (and makes web-2's take 5 s)"
sed -i 's/system.failActivation = false;/system.failActivation = true;/; s/a host whose next change will fail to activate/a host whose activation now fails/' "$FLEET/hosts/broken.nix"
sed -i 's/^}$/  system.activationSeconds = 5;\n}/' "$FLEET/hosts/web-2.nix"
git commit -qam "round two: broken's activation fails, web-2's is slow"
run git show --stat --format=%s HEAD
deploy
ticks

say "8. Server: bento status (round two: broken rolled back to round one's system)"
show_status
echo "(bento status exited $code: 5 means some host needs attention; \"broken\" rolled back, on purpose)"
echo
echo "Logs of the host that rolled back: $BENTO logs --chroot-root $DEMO/chroot broken"
"$BENTO" logs --chroot-root "$DEMO/chroot" broken 2>&1 | tail -n 8 | sed 's/^/    /'

say "9. Server: bento history broken (what the server saw happen to it, from its SQLite history)"
run "$BENTO" history --chroot-root "$DEMO/chroot" broken
echo "(the same fleet on a web page: $BENTO serve --flake $FLEET --chroot-root $DEMO/chroot --state-dir $DEMO/server, opened through ssh -L 8470:127.0.0.1:8470)"
