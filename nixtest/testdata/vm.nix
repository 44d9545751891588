# Evaluates the VM tests (nixtest/vm) with the stand-ins: runNixOSTest
# returns its arguments, each node is evaluated with minilib (freeform: the
# NixOS and test-driver options they set are accepted), and the test
# script is rendered. The published fleet (nixtest/vm/fleet) is evaluated
# too, so that its clients can be compared with the VMs' own.
{ repo, bento }:
let
  lib = import ./minilib.nix;
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
  };
  pkgs = import ./pkgs.nix // {
    inherit lib;
    path = "/nix/store/00000000000000000000000000000000-nixpkgs";
    testers.runNixOSTest = args: args;
    runCommand = name: _env: _script: fake name;
    writeClosure = _: fake "closure";
    jq = fake "jq";
    iproute2 = fake "iproute2";
    gawk = fake "gawk";
  };
  self = builtins.getFlake "path:${toString bento}";
  # What the test driver and nixpkgs' test modules add to every node.
  vmStub = name: {
    networking.hostName = lib.mkDefault name;
    system.build.toplevel = fake "nixos-system-${name}";
    system.build.networkConfig.networking.primaryIPAddress = "192.168.1.1";
    boot.initrd.services.udev.rules = "";
  };
  evalHost =
    name: modules: specialArgs:
    (import ./eval.nix {
      modules = modules ++ [ (vmStub name) ];
      freeform = true;
      inherit specialArgs;
    }).config;
  nixpkgs = {
    outPath = pkgs.path;
    lib = lib // {
      nixosSystem =
        { modules, ... }:
        {
          # nixpkgs' own modules (nixos-test-base.nix) are not here.
          config = evalHost "fleet" (builtins.filter (m: !(builtins.isString m && lib.hasPrefix pkgs.path m)) modules) { };
        };
      importJSON = _: { };
    };
  };

  checks = import (repo + "/nixtest/vm") { inherit pkgs self nixpkgs; };
  fleet = (import (repo + "/nixtest/vm/fleet/flake.nix")).outputs {
    self = fleet;
    inherit nixpkgs;
    bento = self;
  };

  summary = c: {
    failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
    bento = if c.services.bento.enable or false then removeAttrs c.services.bento [ "package" ] else null;
    server = if c.services.bento-server.enable or false then removeAttrs c.services.bento-server [ "package" ] else null;
    etc = builtins.mapAttrs (_: e: e.text or null) c.environment.etc;
  };
in
{
  checks = builtins.mapAttrs (
    _: t:
    let
      nodes = builtins.mapAttrs (name: node: evalHost name [ node ] { nodes = nodes; }) t.nodes;
    in
    {
      inherit (t) name;
      nodes = builtins.mapAttrs (_: summary) nodes;
      script = t.testScript { inherit nodes; };
    }
  ) checks;
  fleet = builtins.mapAttrs (_: h: summary h.config) fleet.nixosConfigurations;
}
