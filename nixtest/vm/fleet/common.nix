# The configuration of the VM test clients, shared by the test's own nodes
# (the systems the VMs boot) and by the fleet flake the server publishes
# (the systems the agents switch to). `bentoTest.version` is what a test
# bumps; `bentoTest.scenario` says what version 2 breaks on client1.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  t = config.bentoTest;
  name = config.networking.hostName;
  v2 = t.version >= 2;
  broken = v2 && name == "client1";

  # ip route add|del blackhole for each address of "server" in /etc/hosts
  # (/32 for IPv4, /128 for IPv6); it fails when there is none.
  cutServer = op: ''
    addrs=$(awk '{ for (i = 2; i <= NF; i++) if ($i == "server") print $1 }' /etc/hosts | sort -u)
    test -n "$addrs"
    for a in $addrs; do
      case $a in
        *:*) ip -6 route ${op} blackhole "$a/128" ;;
        *) ip route ${op} blackhole "$a/32" ;;
      esac
    done
  '';
in
{
  options.bentoTest = {
    version = lib.mkOption {
      type = lib.types.int;
      default = 1;
    };
    scenario = lib.mkOption {
      type = lib.types.enum [
        "happy-path"
        "activation-rollback"
        "server-lost-rollback"
        "kernel-reboot"
      ];
    };
  };

  config = lib.mkMerge [
    {
      # The same VM settings in the booted and in the published systems, so
      # that a switch keeps the test VM working (deploy-rs's tests do the same).
      virtualisation = {
        memorySize = 2048;
        cores = 2;
        writableStore = true;
      };
      documentation.enable = false;
      # nixos-test-base turns switch-to-configuration off by default.
      system.switch.enable = true;
      nix.settings = {
        substituters = lib.mkForce [ ];
        experimental-features = [
          "nix-command"
          "flakes"
        ];
      };

      environment.etc."bento-test".text = toString t.version;

      services.bento = {
        enable = true;
        server = "server";
        serverHostKey = lib.fileContents ./keys/server.pub;
        identityFile = "/etc/bento/id_ed25519";
        hostPublicKey = lib.fileContents (./keys + "/${name}.pub");
        confirmTimeout = 20;
        retry.initialDelay = "1s";
      };
      environment.etc."bento/id_ed25519" = {
        source = ./keys + "/${name}";
        mode = "0600";
      };
      # The test runs every tick itself.
      systemd.timers.bento-agent.enable = false;
    }

    # client2 reboots at once; its reboot command only records that it ran
    # (without a boot loader, a test VM reboots into the system it started).
    (lib.mkIf (name == "client2") {
      services.bento.reboot = {
        policy = "now";
        command = [
          "${pkgs.coreutils}/bin/touch"
          "/var/lib/bento-test-rebooted"
        ];
      };
    })

    # Version 2 of client1 fails to activate: a unit that cannot start.
    (lib.mkIf (broken && t.scenario == "activation-rollback") {
      systemd.services.bento-test-fail = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${pkgs.coreutils}/bin/false";
        };
      };
    })

    # Version 2 of client1 activates, then loses the server: blackhole
    # routes to every address /etc/hosts gives it, removed again when the
    # unit is stopped (by the rollback). Every one: the test driver gives
    # each node an IPv6 address too, and Go's dialer tries the other
    # family when one fails, so an IPv4-only cut leaves the server reachable.
    (lib.mkIf (broken && t.scenario == "server-lost-rollback") {
      systemd.services.bento-test-cut = {
        wantedBy = [ "multi-user.target" ];
        path = [
          pkgs.iproute2
          pkgs.gawk
        ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
        };
        script = cutServer "add";
        preStop = cutServer "del";
      };
    })

    # Version 2 changes the kernel command line: a reboot is needed.
    (lib.mkIf (v2 && t.scenario == "kernel-reboot") {
      boot.kernelParams = [ "bento.test=2" ];
    })
  ];
}
