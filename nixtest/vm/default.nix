# NixOS VM tests of bento: a server and two clients, the real modules, the
# real agent and the real deploy, with no network.
#
#   nix build .#checks.x86_64-linux.vm-happy-path      (and the three others)
#
# They need KVM and build whole NixOS systems, so they run with
# `nix flake check` on a Linux machine with KVM, not in bento's Go tests.
#
# How they work offline (as deploy-rs's VM tests do): the fleet flake the
# server publishes (./fleet) takes nixpkgs and bento as `path:` inputs to
# store paths present in the VMs, and describes the clients with the same
# modules as the VMs' own configuration (./fleet/common.nix), plus the
# VM's network settings captured from the test driver. Every build
# dependency of the clients' systems is put in the VMs' stores, so the
# server (`bento deploy`) and each client (`bento agent run`, build mode)
# build version 2 from what is there. Version 2 differs by one file on both
# clients, and per scenario on client1:
#
#   vm-happy-path            both clients switch and confirm
#   vm-activation-rollback   client1's new system has a unit that fails to
#                            start: switch fails, the agent rolls back
#   vm-server-lost-rollback  client1's new system routes the server's IPv4
#                            and IPv6 addresses to a blackhole: the agent
#                            cannot confirm, rolls back
#   vm-kernel-reboot         the kernel command line changes: client1
#                            (policy never) reports reboot-required, client2
#                            (policy now) runs its reboot command
{
  pkgs,
  self,
  nixpkgs,
}:
let
  inherit (pkgs) lib;

  # Every output of every derivation in a system's build closure, so that a
  # VM can build a variant of that system without a binary cache.
  allDrvOutputs =
    pkg:
    pkgs.runCommand "all-drv-outputs-${pkg.name}" { refs = pkgs.writeClosure [ pkg.drvPath ]; } ''
      touch $out
      while read ref; do
        case $ref in
          *.drv) cat $ref >> $out ;;
        esac
      done < $refs
    '';

  fleetInputs = ''
    nixpkgs.url = "path:${nixpkgs}";
    bento.url = "path:${self}";
    bento.inputs.nixpkgs.follows = "nixpkgs";
  '';
  fleetFlake = pkgs.writeText "flake.nix" (
    lib.replaceStrings [ "##inputs##" "##system##" ] [ fleetInputs pkgs.stdenv.hostPlatform.system ] (
      builtins.readFile ./fleet/flake.nix
    )
  );

  key = name: lib.fileContents (./fleet/keys + "/${name}.pub");

  mkTest =
    scenario: testScript:
    pkgs.testers.runNixOSTest {
      name = "bento-${scenario}";

      nodes =
        let
          scenarioModule = {
            bentoTest.scenario = scenario;
          };
          client =
            { nodes, config, ... }:
            {
              imports = [
                self.nixosModules.client
                ./fleet/common.nix
                scenarioModule
              ];
              virtualisation.additionalPaths = [
                nixpkgs
                self
                (allDrvOutputs nodes.${config.networking.hostName}.system.build.toplevel)
              ];
            };
        in
        {
          server =
            { nodes, ... }:
            {
              imports = [ self.nixosModules.server ];
              services.bento-server = {
                enable = true;
                hosts.client1.publicKeys = [ (key "client1") ];
                hosts.client2.publicKeys = [ (key "client2") ];
                flake = "/srv/fleet";
                deploy.enable = true;
              };
              # The test starts bento-deploy.service itself.
              systemd.timers.bento-deploy.enable = false;
              # A fixed host key, so that the clients can pin it.
              environment.etc."ssh/ssh_host_ed25519_key" = {
                source = ./fleet/keys/server;
                mode = "0600";
              };
              environment.systemPackages = [
                pkgs.jq
                pkgs.git
              ];
              nix.settings = {
                substituters = lib.mkForce [ ];
                experimental-features = [
                  "nix-command"
                  "flakes"
                ];
              };
              virtualisation = {
                memorySize = 4096;
                cores = 2;
                writableStore = true;
                additionalPaths = [
                  nixpkgs
                  self
                  (allDrvOutputs nodes.client1.system.build.toplevel)
                  (allDrvOutputs nodes.client2.system.build.toplevel)
                ];
              };
            };
          client1 = client;
          client2 = client;
        };

      testScript =
        { nodes, ... }:
        let
          # The network the test driver gave each client, and its NIC naming
          # rules in the initrd (so that the published systems keep both and
          # boot the same initrd as the VM).
          vmModule =
            name:
            pkgs.writeText "network-${name}.json" (
              builtins.toJSON (
                nodes.${name}.system.build.networkConfig
                // {
                  boot.initrd.services.udev.rules = lib.mkForce nodes.${name}.boot.initrd.services.udev.rules;
                }
              )
            );
        in
        ''
          import json

          def report(host):
              return json.loads(server.succeed(f"cat /home/chroot/{host}/reports/status.json"))

          def system(machine):
              return machine.succeed("readlink -f /run/current-system").strip()

          def expected(host):
              return server.succeed(f"jq -r .expectedToplevel /home/chroot/{host}/manifest.json").strip()

          def publish(version):
              server.succeed(f"echo '{{ bentoTest.version = {version}; }}' > /srv/fleet/version.nix")
              server.succeed("systemctl start bento-deploy.service >&2")
              server.succeed("journalctl -u bento-deploy.service --no-pager >&2")

          start_all()
          server.wait_for_unit("sshd.service")
          server.wait_for_unit("multi-user.target")

          with subtest("the fleet flake, locked offline"):
              server.succeed(
                  "mkdir -p /srv && cp -r ${./fleet} /srv/fleet && chmod -R u+w /srv/fleet",
                  "cp ${fleetFlake} /srv/fleet/flake.nix",
                  "cp ${vmModule "client1"} /srv/fleet/network-client1.json",
                  "cp ${vmModule "client2"} /srv/fleet/network-client2.json",
                  "echo '{ bentoTest.scenario = \"${scenario}\"; }' > /srv/fleet/scenario.nix",
                  "cd /srv/fleet && nix flake lock >&2",
              )

          with subtest("version 1: what the clients already run"):
              publish(1)
              for c, name in [(client1, "client1"), (client2, "client2")]:
                  c.wait_for_unit("multi-user.target")
                  c.succeed("systemctl start bento-agent.service")
                  r = report(name)
                  assert r["result"] in ("success", "unchanged"), r
                  # The published system boots the same kernel and initrd as
                  # the VM: otherwise every scenario would need a reboot.
                  assert not r["rebootRequired"], f"{name}: version 1 already needs a reboot: {r}"
              before = {"client1": system(client1), "client2": system(client2)}

          publish(2)

          ${testScript}
        '';
    };
in
{
  vm-happy-path = mkTest "happy-path" ''
    with subtest("both clients switch to version 2 and confirm"):
        for c, name in [(client1, "client1"), (client2, "client2")]:
            c.succeed("systemctl start bento-agent.service")
            c.succeed("test \"$(cat /etc/bento-test)\" = 2")
            assert system(c) == expected(name), (system(c), expected(name))
            r = report(name)
            assert r["result"] == "success" and r["stage"] == "confirmed", r
            assert r["appliedVersion"] == r["seenVersion"], r
            assert r["reproducible"] is True, r
            assert not r["rebootRequired"], r

    with subtest("nothing new: nothing is downloaded, built or switched"):
        before = client1.succeed("stat -c %Y /nix/var/nix/profiles/system").strip()
        client1.succeed("systemctl start bento-agent.service")
        assert client1.succeed("stat -c %Y /nix/var/nix/profiles/system").strip() == before

    with subtest("bento status on the server"):
        server.succeed("cd /srv/fleet && bento status >&2")
  '';

  vm-activation-rollback = mkTest "activation-rollback" ''
    with subtest("client1: activation fails, the agent rolls back"):
        client1.fail("systemctl start bento-agent.service")
        client1.succeed("test \"$(cat /etc/bento-test)\" = 1")
        assert system(client1) == before["client1"], (system(client1), before["client1"])
        client1.fail("systemctl is-active bento-test-fail.service")
        r = report("client1")
        assert r["result"] == "rolled-back" and r["stage"] == "rolled-back", r
        assert r["rollbackReason"] == "activation-failed", r

    with subtest("client2 is not affected"):
        client2.succeed("systemctl start bento-agent.service")
        client2.succeed("test \"$(cat /etc/bento-test)\" = 2")
        assert report("client2")["result"] == "success"
  '';

  vm-server-lost-rollback = mkTest "server-lost-rollback" ''
    with subtest("client1: the new system cannot reach the server, the agent rolls back"):
        client1.fail("systemctl start bento-agent.service")
        client1.succeed("test \"$(cat /etc/bento-test)\" = 1")
        assert system(client1) == before["client1"], (system(client1), before["client1"])
        # The rollback removed the blackhole routes: the server is reachable.
        client1.succeed("! ip route show type blackhole | grep -q .")
        client1.succeed("! ip -6 route show type blackhole | grep -q .")
        r = report("client1")
        if r["result"] != "rolled-back":
            # The report waited in the agent's queue: the next tick sends it.
            client1.execute("systemctl start bento-agent.service")
            r = report("client1")
        assert r["result"] == "rolled-back" and r["rollbackReason"] == "server-unreachable", r

    with subtest("client2 is not affected"):
        client2.succeed("systemctl start bento-agent.service")
        client2.succeed("test \"$(cat /etc/bento-test)\" = 2")
  '';

  vm-kernel-reboot = mkTest "kernel-reboot" ''
    with subtest("client1, policy never: switched, reboot required, no reboot"):
        client1.succeed("systemctl start bento-agent.service")
        client1.succeed("grep -q bento.test=2 /run/current-system/kernel-params")
        r = report("client1")
        assert r["result"] == "success" and r["rebootRequired"], r
        client1.fail("test -e /var/lib/bento-test-rebooted")

    with subtest("client2, policy now: its reboot command runs"):
        client2.succeed("systemctl start bento-agent.service")
        client2.succeed("test -e /var/lib/bento-test-rebooted")
        assert report("client2")["rebootRequired"], report("client2")
  '';
}
