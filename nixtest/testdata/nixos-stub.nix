# Test-only declarations of the NixOS options bento's modules read or
# define, with NixOS's names, defaults and (close enough) types. Evaluated
# with minilib.nix, any other option a module defines is an error, so this
# file is also the list of NixOS options bento depends on.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;

  opt =
    type: default:
    mkOption {
      inherit type default;
    };
  strList = opt (types.listOf types.str) [ ];

  # systemd's [Section] values: scalars must agree, lists concatenate
  # (nixpkgs' utils.systemdUtils.unitOption).
  unitScalar = types.oneOf [
    types.bool
    types.int
    types.str
    types.path
    types.package
  ];
  unitOption = lib.mkOptionType {
    name = "systemd option";
    description = "systemd option";
    check = x: unitScalar.check x || (builtins.isList x && builtins.all unitScalar.check x);
    merge =
      loc: defs:
      if builtins.any (d: builtins.isList d.value) defs then
        lib.concatMap (d: lib.toList d.value) defs
      else
        (types.either unitScalar unitScalar).merge loc defs;
  };
  section = opt (types.attrsOf unitOption) { };

  # nixpkgs' unitNameType: a unit's dependencies must be unit names.
  unitNames = opt (types.listOf (
    types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)"
  )) [ ];

  unitCommon = {
    description = opt types.str "";
    wantedBy = unitNames;
    requiredBy = unitNames;
    wants = unitNames;
    requires = unitNames;
    after = unitNames;
    before = unitNames;
    unitConfig = section;
  };

  service = {
    options = unitCommon // {
      serviceConfig = section;
      path = opt (types.listOf (types.either types.package types.str)) [ ];
      environment = opt (types.attrsOf (types.nullOr (types.either types.str types.package))) { };
      restartIfChanged = opt types.bool true;
      stopIfChanged = opt types.bool true;
      script = opt types.lines "";
      preStop = opt types.lines "";
      startAt = opt (types.either types.str (types.listOf types.str)) [ ];
    };
  };
  timer = {
    options = unitCommon // {
      timerConfig = section;
    };
  };
  socket = {
    options = unitCommon // {
      socketConfig = section;
      listenStreams = strList;
      listenDatagrams = strList;
    };
  };
  user =
    { name, ... }:
    {
      options = {
        name = opt types.str name;
        isSystemUser = opt types.bool false;
        isNormalUser = opt types.bool false;
        group = opt types.str "";
        extraGroups = strList;
        description = opt types.str "";
        home = opt types.path "/var/empty";
        createHome = opt types.bool false;
        shell = opt (types.nullOr (types.either types.package types.path)) null;
        uid = opt (types.nullOr types.int) null;
        openssh.authorizedKeys.keys = strList;
      };
    };
  group = {
    options = {
      gid = opt (types.nullOr types.int) null;
      members = strList;
    };
  };
  fileSystem = {
    options = {
      device = opt (types.nullOr types.str) null;
      fsType = opt types.str "auto";
      options = opt (types.listOf types.str) [ "defaults" ];
    };
  };
  etcFile = {
    options = {
      source = opt types.path "/nix/store/00000000000000000000000000000000-etc-text";
      text = opt (types.nullOr types.lines) null;
      mode = opt types.str "symlink";
    };
  };
in
{
  options = {
    assertions = opt (types.listOf types.unspecified) [ ];
    warnings = opt (types.listOf types.str) [ ];
    system.checks = opt (types.listOf types.package) [ ];

    networking.hostName = opt types.str "nixos";
    networking.proxy.envVars = opt (types.attrsOf types.str) { };

    nix.package = opt types.package pkgs.nix;
    programs.ssh.package = opt types.package pkgs.openssh;
    systemd.package = opt types.package pkgs.systemd;

    environment.systemPackages = opt (types.listOf types.package) [ ];
    environment.etc = opt (types.attrsOf (types.submodule etcFile)) { };
    environment.variables = opt (types.attrsOf (types.either types.str (types.listOf types.str))) { };

    fileSystems = opt (types.attrsOf (types.submodule fileSystem)) { };

    systemd.services = opt (types.attrsOf (types.submodule service)) { };
    systemd.timers = opt (types.attrsOf (types.submodule timer)) { };
    systemd.sockets = opt (types.attrsOf (types.submodule socket)) { };
    systemd.tmpfiles.rules = strList;

    users.users = opt (types.attrsOf (types.submodule user)) { };
    users.groups = opt (types.attrsOf (types.submodule group)) { };

    services.openssh = {
      enable = opt types.bool false;
      # NixOS: a submodule with a freeform type; rendered `Key value` lines.
      settings = opt (types.attrsOf types.anything) { };
      extraConfig = opt types.lines "";
    };

    services.nix-serve = {
      enable = opt types.bool false;
      port = opt types.port 5000;
      bindAddress = opt types.str "0.0.0.0";
      openFirewall = opt types.bool false;
      secretKeyFile = opt (types.nullOr types.str) null;
    };
  };
}
