# services.bento: the client half of bento on every NixOS host of a fleet.
#
# A timer runs `bento agent run --config <agent.json>`, which polls this
# host's own SFTP chroot on the server, downloads a newly published
# version of the fleet flake, builds (or fetches) this host's system,
# switches with a guarded rollback, reboots by policy and uploads a report.
#
# `bento deploy` on the server reads some of these options (user, server,
# port, mode, operation, interval, tags, secrets) from each host's
# evaluated configuration: their names are part of bento's interface.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    concatLists
    concatMap
    concatMapStringsSep
    concatStringsSep
    hasPrefix
    literalExpression
    mapAttrs
    mapAttrsToList
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    types
    unique
    ;

  cfg = config.services.bento;

  # One argument of an ExecStart= line, quoted for systemd (the same as
  # nixpkgs' utils.escapeSystemdExecArg): JSON string quoting, with % and $
  # doubled so systemd expands neither specifiers nor variables.
  escapeArg = arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
  execLine = args: concatMapStringsSep " " escapeArg args;

  defaultIdentityFile = "/etc/ssh/ssh_host_ed25519_key";

  inStore = p: hasPrefix "${builtins.storeDir}/" (toString p);

  # A systemd time span (systemd.time(7)): "90s", "15min", "1h 30min",
  # "2 days"; Go's "1h30m" is one too. A unit-less number is seconds, and
  # may only come last ("1min 30"). The agent parses the same spellings
  # (internal/timespan), so what passes here reaches it unchanged.
  spanUnits = "usec|us|µs|μs|nsec|ns|msec|ms|seconds|second|sec|s|minutes|minute|min|m|hours|hour|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y";
  # What strconv.ParseFloat reads of digits and one dot: "1", "1.5", ".5", "1.".
  spanNumber = "([0-9]+[.]?[0-9]*|[.][0-9]+)";
  spanPattern = "[ ]*(((${spanNumber})[ ]*(${spanUnits})[ ]*)+(${spanNumber}[ ]*)?|${spanNumber}[ ]*)";
  span = types.strMatching spanPattern // {
    description = "systemd time span such as \"90s\", \"15min\" or \"1h 30min\"";
  };
  # Integer seconds, as confirmTimeout used to take, still work.
  spanOrSeconds = types.coercedTo types.ints.positive (n: "${toString n}s") span;

  spanUnitSeconds = {
    "" = 1;
    usec = 1.0e-6;
    us = 1.0e-6;
    "µs" = 1.0e-6;
    "μs" = 1.0e-6;
    nsec = 1.0e-9;
    ns = 1.0e-9;
    msec = 1.0e-3;
    ms = 1.0e-3;
    seconds = 1;
    second = 1;
    sec = 1;
    s = 1;
    minutes = 60;
    minute = 60;
    min = 60;
    m = 60;
    hours = 3600;
    hour = 3600;
    hr = 3600;
    h = 3600;
    days = 86400;
    day = 86400;
    d = 86400;
    weeks = 604800;
    week = 604800;
    w = 604800;
    months = 2629800;
    month = 2629800;
    M = 2629800;
    years = 31557600;
    year = 31557600;
    y = 31557600;
  };
  # The seconds a span (already of type `span`) stands for, to compare
  # two of them in an assertion.
  spanSeconds =
    s:
    let
      # "015", ".5" and "1." are not JSON numbers: rebuild each as one.
      number =
        n:
        let
          m = builtins.match "0*([0-9]*)[.]?([0-9]*)" n;
          whole = builtins.elemAt m 0;
          fraction = builtins.elemAt m 1;
        in
        builtins.fromJSON ((if whole == "" then "0" else whole) + (if fraction == "" then "" else ".${fraction}"));
    in
    builtins.foldl' (acc: p: acc + number (builtins.elemAt p 0) * spanUnitSeconds.${builtins.elemAt p 2}) 0 (
      builtins.filter builtins.isList (builtins.split "(${spanNumber})[ ]*([^0-9. ]*)" s)
    );

  # systemd unit names, as nixpkgs' unitNameType: a secret's restartUnits
  # end up in bento-secrets' Before=, so a bad one is refused here, on the
  # option the user wrote.
  unitName = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # An OpenSSH public key (optionally a whole known_hosts line); the blob
  # must be base64 as far as a pattern can tell: whole groups of four,
  # padding only at the end.
  keyPattern = "(.*[ ])?(ssh-[a-z0-9]+|ecdsa-sha2-[a-z0-9]+|sk-[a-z0-9@.-]+)[ ]+(AAAA[^ ]*)([ ].*)?";
  keyBlob = k: builtins.elemAt (builtins.match keyPattern k) 2;
  base64Blob = b: builtins.match "([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?" b != null;

  # What `bento agent` reads (--config). Keys are bento's interface with
  # the agent: see docs/modules.md.
  agentConfig = {
    host = cfg.host;
    inherit (cfg)
      server
      port
      user
      serverHostKey
      mode
      operation
      substituters
      trustedPublicKeys
      narinfoCacheNegativeTTL
      selfUpdate
      ;
    identityFile = toString cfg.identityFile;
    stateDir = toString cfg.stateDir;
    inherit (cfg) confirmTimeout;
    reboot = {
      inherit (cfg.reboot) policy window;
    };
    retry = {
      inherit (cfg.retry) initialDelay maxDelay;
    };
    profile = "/nix/var/nix/profiles/system";
    currentSystem = "/run/current-system";
    bootedSystem = "/run/booted-system";
    rebootCommand = cfg.reboot.command;
    trigger = {
      inherit (cfg.trigger) allowedGroups;
    };
    secrets = mapAttrs (_: s: {
      inherit (s)
        path
        owner
        group
        mode
        restartUnits
        ;
    }) cfg.secrets;
  }
  // lib.optionalAttrs (cfg.healthChecks != { }) {
    # Health checks: only the kind that is set (the agent refuses two).
    healthUnitCommand = [
      "${config.systemd.package}/bin/systemctl"
      "is-active"
    ];
    healthChecks = mapAttrs (
      _: c:
      {
        inherit (c)
          timeout
          retries
          interval
          settle
          continuous
          ;
      }
      // lib.optionalAttrs (c.unit != null) { inherit (c) unit; }
      // lib.optionalAttrs (c.command != null) { inherit (c) command user; }
      // lib.optionalAttrs (c.http != null) {
        http = { inherit (c.http) url expectStatus; };
      }
    ) cfg.healthChecks;
  }
  # Signed publications (docs/mirrors.md): only when set, so that an
  # older agent reading this file sees nothing new.
  // lib.optionalAttrs (cfg.publicationKey != null) { inherit (cfg) publicationKey; }
  // lib.optionalAttrs (cfg.maxPublicationAge != null) { inherit (cfg) maxPublicationAge; };

  # The longest the health checks can hold a switch: they run against the
  # new system, and after a rollback against the old one (each attempt
  # its timeout plus 5s for SIGKILL).
  healthSeconds = builtins.foldl' maxOf 0 (
    mapAttrsToList (
      _: c:
      spanSeconds c.settle
      + (c.retries + 1) * (spanSeconds c.timeout + 5)
      + c.retries * spanSeconds c.interval
    ) cfg.healthChecks
  );
  maxOf = a: b: if a > b then a else b;

  # services.bento.servers replaces server, port and serverHostKey (left
  # unset, they are null: the agent refuses both ways at once, too).
  serversConfig = optionalAttrs (cfg.servers != [ ]) {
    inherit (cfg) serverOrder;
    servers = map (s: {
      inherit (s) address port hostKey;
      user = if s.user == null then userName else s.user;
    }) cfg.servers;
  };

  configFile = pkgs.writeText "bento-agent.json" (builtins.toJSON (agentConfig // serversConfig));
  agentConfigEtc = "bento/agent.json";

  configCheck = pkgs.runCommand "bento-agent-config-check" { } ''
    ${bento} agent check-config --config ${configFile} > "$out"
  '';

  bento = "${cfg.package}/bin/bento";

  # The agent switches the whole system: the activation script installs the
  # boot loader, writes /etc, creates users and homes, loads kernel modules
  # and restarts units. ProtectSystem, ProtectHome, PrivateDevices,
  # ProtectKernel*, RestrictSUIDSGID, NoNewPrivileges, PrivateTmp or a
  # restrictive UMask would each break some activation, so the unit keeps
  # to what cannot: builds run in nix-daemon's sandbox (NIX_REMOTE=daemon),
  # not in this unit.
  hardening = {
    LockPersonality = true;
    RestrictRealtime = true;
    SystemCallArchitectures = "native";
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
  };

  # A switch must never stop or restart the unit that is running it.
  unitCommon = {
    restartIfChanged = false;
    unitConfig.X-StopOnRemoval = false;
    path = [
      pkgs.coreutils
      pkgs.gnutar
      pkgs.gzip
      pkgs.xz
      pkgs.gitMinimal
      pkgs.age # decrypts .age secrets with the host's key
      config.nix.package
      config.programs.ssh.package
      config.systemd.package
    ];
    environment = {
      HOME = "/root";
      NIX_REMOTE = "daemon";
    }
    // config.networking.proxy.envVars;
  };

  secretModule =
    { name, ... }:
    {
      options = {
        path = mkOption {
          type = types.str;
          default = "/run/bento-secrets/${name}";
          defaultText = literalExpression ''"/run/bento-secrets/''${name}"'';
          description = "Where the agent installs the secret (atomically, never in the Nix store).";
        };
        owner = mkOption {
          type = types.str;
          default = "root";
          description = "Owner of the installed secret file.";
        };
        group = mkOption {
          type = types.str;
          default = "root";
          description = "Group of the installed secret file.";
        };
        mode = mkOption {
          type = types.strMatching "0?[0-7]{3}";
          default = "0400";
          description = "Octal permissions of the installed secret file.";
        };
        restartUnits = mkOption {
          type = types.listOf unitName;
          default = [ ];
          example = [ "nginx.service" ];
          description = "Units the agent restarts when this secret changed.";
        };
      };
    };

  triggerAddresses = [
    "unix:${cfg.trigger.socket}"
  ]
  ++ optional (cfg.trigger.port != null) "127.0.0.1:${toString cfg.trigger.port}";

  safeSecretName = name: builtins.match "[A-Za-z0-9_][A-Za-z0-9._-]*" name != null;
  userName = cfg.user;
in
{
  options.services.bento = {
    enable = mkEnableOption "the bento agent, which keeps this host on the configuration its bento server publishes";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../nix/package.nix { };
      defaultText = literalExpression "bento.packages.\${system}.bento (through the flake), else pkgs.callPackage (bento + \"/nix/package.nix\") { }";
      description = ''
        The bento package. Imported through the flake's `nixosModules`, the
        default is the flake's own `packages.''${system}.bento`; imported
        as a file (without the flake), bento is built from the same source
        with this host's nixpkgs, which needs Go 1.26.
      '';
    };

    server = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "bento.example.org";
      description = "Host name or address of the bento server (required when enabled).";
    };

    port = mkOption {
      type = types.port;
      default = 22;
      description = "SSH port of the bento server.";
    };

    host = mkOption {
      type = types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*";
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      example = "web-1";
      description = ''
        This host's name in the fleet: the `nixosConfigurations` attribute the
        server publishes it as (its chroot and manifest are named after it).
        Set it when that attribute differs from `networking.hostName`, for
        example `nixosConfigurations."pi.home"`; `bento deploy` and
        `bento check` refuse a host whose name here differs from its attribute.
      '';
    };

    user = mkOption {
      type = types.str;
      default = cfg.host;
      defaultText = literalExpression "config.services.bento.host";
      description = ''
        This host's SFTP user on the server. `bento deploy` reads it to give
        the host's chroot to that user; the server module creates it.
      '';
    };

    identityFile = mkOption {
      type = types.path;
      default = defaultIdentityFile;
      description = ''
        Private key the agent logs in with. The default is this host's own
        SSH host key, so there is nothing to generate: put its public half
        (`/etc/ssh/ssh_host_ed25519_key.pub`) in {option}`services.bento.hostPublicKey`.
        Give a string, never a Nix path literal (which would copy the key
        into the world-readable Nix store).
      '';
    };

    hostPublicKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@web-1";
      description = ''
        Public half of {option}`services.bento.identityFile`. The agent does
        not use it: the server does, through
        `bento.lib.hostsFromNixosConfigurations`, to authorize this host's
        SFTP user. Print it on the host with
        `cat /etc/ssh/ssh_host_ed25519_key.pub`.
      '';
    };

    serverHostKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@bento";
      description = ''
        The server's SSH host public key (`ssh-ed25519 AAAA…`) or a whole
        `known_hosts` line. The agent verifies the server against it and
        nothing else: there is no trust on first use. Required when enabled.
        On the server: `cat /etc/ssh/ssh_host_ed25519_key.pub`.
      '';
    };

    # Mirrors and failover (docs/mirrors.md): several servers, the primary first.
    servers = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            address = mkOption {
              type = types.str;
              example = "mirror.example.org";
              description = "Host name or address of this server.";
            };
            port = mkOption {
              type = types.port;
              default = 22;
              description = "Its SSH port.";
            };
            hostKey = mkOption {
              type = types.str;
              example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@mirror";
              description = "Its SSH host public key or a `known_hosts` line, as {option}`services.bento.serverHostKey`.";
            };
            user = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "This host's SFTP user there, when not {option}`services.bento.user`.";
            };
          };
        }
      );
      default = [ ];
      example = literalExpression ''
        [
          { address = "bento.example.org"; hostKey = "ssh-ed25519 AAAA… root@bento"; }
          { address = "mirror.example.org"; port = 2222; hostKey = "ssh-ed25519 AAAA… root@mirror"; }
        ]
      '';
      description = ''
        The bento servers this host may poll: the primary, then mirrors that
        `bento mirror push` fills ({option}`services.bento-server.mirrors`).
        Each tick tries them in turn, with the connect timeout and backoff of
        one server, and reports through the one it reached. When set, leave
        {option}`services.bento.server` and {option}`services.bento.serverHostKey`
        unset: the single-server options are the one-element case.
      '';
    };

    serverOrder = mkOption {
      type = types.enum [
        "sticky"
        "ordered"
      ];
      default = "sticky";
      description = ''
        With several {option}`services.bento.servers`: `sticky` tries the one
        that answered last first (a primary that is down costs nothing until
        the mirror fails too); `ordered` always starts with the first.
      '';
    };

    interval = mkOption {
      type = types.str;
      default = "*:0/10";
      example = "hourly";
      description = "When the agent polls the server: a systemd `OnCalendar=` expression (see {manpage}`systemd.time(7)`).";
    };

    randomizedDelaySec = mkOption {
      type = span;
      default = "5min";
      description = ''
        Random delay added to each poll (`RandomizedDelaySec=`), so that the
        hosts of a fleet do not all connect at the same second.
      '';
    };

    persistent = mkOption {
      type = types.bool;
      default = true;
      description = "Run a poll missed while the host was off as soon as it is back (`Persistent=`).";
    };

    timeout = mkOption {
      type = types.strMatching "infinity|${spanPattern}" // {
        description = "systemd time span or \"infinity\"";
      };
      default = "2h";
      description = ''
        Longest time one run of the agent may take (`TimeoutStartSec=`):
        a hung download or build never blocks the timer for ever.
      '';
    };

    mode = mkOption {
      type = types.enum [
        "build"
        "fetch"
      ];
      default = "build";
      description = ''
        `build`: evaluate and build this host's system from the downloaded
        flake. `fetch`: evaluate nothing, realise the system the server
        built: for hosts too small to evaluate NixOS. Both substitute from
        the cache the server publishes in this host's chroot, if any, and
        from {option}`services.bento.substituters`.
      '';
    };

    operation = mkOption {
      type = types.enum [
        "switch"
        "boot"
        "test"
      ];
      default = "switch";
      description = "How the new system is activated: `switch-to-configuration switch`, `boot` or `test`.";
    };

    confirmTimeout = mkOption {
      type = spanOrSeconds;
      default = "60s";
      example = "2min";
      description = ''
        How long the agent has, after a switch, to reach the server again
        (a time span; a plain number is seconds). If it cannot, or if
        activation failed, it rolls back to the system that ran before.
        The agent accepts 1s to 1d.
      '';
    };

    reboot = {
      policy = mkOption {
        type = types.enum [
          "never"
          "now"
          "window"
        ];
        default = "never";
        description = ''
          What to do when the new system has another kernel, initrd or kernel
          modules than the booted one: `never` (only report
          `reboot-required`), `now`, or `window` (a random moment inside
          {option}`services.bento.reboot.window`).
        '';
      };

      window = mkOption {
        type = types.strMatching "([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]";
        default = "03:00-05:00";
        description = "Daily local-time window `HH:MM-HH:MM` for reboots under the `window` policy (may cross midnight).";
      };

      command = mkOption {
        type = types.listOf types.str;
        default = [
          "${config.systemd.package}/bin/systemctl"
          "reboot"
        ];
        defaultText = literalExpression ''[ "''${config.systemd.package}/bin/systemctl" "reboot" ]'';
        example = [
          "/run/current-system/sw/bin/systemctl"
          "kexec"
        ];
        description = "The command the agent runs to reboot.";
      };
    };

    retry = {
      initialDelay = mkOption {
        type = span;
        default = "15min";
        description = "After a failed attempt, wait this long before trying the same version again (a time span, at most 30d).";
      };
      maxDelay = mkOption {
        type = span;
        default = "6h";
        description = "The wait between retries of a failing version doubles up to this (a time span, at most 30d; not below initialDelay; 0 for no cap).";
      };
    };

    substituters = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "http://bento.example.org:5000" ];
      description = "Extra binary caches for the agent's builds and fetches, such as the server's cache.";
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "bento.example.org-1:AAAA…" ];
      description = "Public keys the substituters' paths must be signed with.";
    };

    narinfoCacheNegativeTTL = mkOption {
      type = types.ints.unsigned;
      default = 0;
      description = ''
        `narinfo-cache-negative-ttl` for the agent's Nix commands: 0 so that
        a path the server has just published is never remembered as missing.
      '';
    };

    selfUpdate = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Between publications, update the flake inputs of the local copy
        (`nix flake update`), build and switch, and report `auto-updated`.
      '';
    };

    watch = {
      enable = mkEnableOption "watch mode: a service holding one SSH connection to the server that looks at this host's manifest every `services.bento.watch.every` (one SFTP stat) and runs a tick as soon as a publication appears; the timer stays as the fallback. Each watching host holds about 2 MiB of sshd memory on the server (docs/agent.md, Watch mode)";

      every = mkOption {
        type = span;
        default = "5s";
        example = "30s";
        description = "How often the watch looks at the manifest (a time span, from 1s to 10min).";
      };
    };

    trigger = {
      enable = mkEnableOption "the local trigger: a socket that runs a poll now and streams its output (`bento agent trigger`)";

      socket = mkOption {
        type = types.str;
        default = "/run/bento/trigger.sock";
        description = "Unix socket of the local trigger (root only). `bento agent trigger` asks the default one; for another, give it `--address unix:<socket>`.";
      };

      port = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 51337;
        description = "Also listen on this TCP port, on 127.0.0.1 only (never on other interfaces).";
      };

      allowedGroups = mkOption {
        type = types.listOf types.str;
        default = [ "wheel" ];
        example = [ "wheel" "ops" ];
        description = ''
          Besides root, members of these groups may use the local trigger (a
          triggered tick runs as root and streams its whole output). Checked on
          every connection: the TCP client's uid is the owner of its socket,
          the unix socket's is its peer credential.
        '';
      };
    };

    # Rollouts in waves (docs/rollout.md): read by the server's
    # `bento rollout start` / `bento deploy --rollout`, never by the agent.
    rollout.wave = mkOption {
      type = types.ints.unsigned;
      default = 1;
      example = 0;
      description = ''
        The wave of a staged rollout this host belongs to: `bento rollout start`
        publishes a new version to wave 0 (the canaries) first, and to each
        following wave only once the previous one reported up-to-date and
        healthy. The server's `--wave-tag TAG=N` overrides it for tagged hosts.
      '';
    };

    tags = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [
        "web"
        "eu"
      ];
      description = "Tags for selecting hosts on the server (`bento deploy @web`).";
    };

    stateDir = mkOption {
      type = types.path;
      default = "/var/lib/bento";
      description = "Where the agent keeps its copy of the flake, its state and queued reports.";
    };

    secrets = mkOption {
      type = types.attrsOf (types.submodule secretModule);
      default = { };
      example = literalExpression ''{ "wg.key" = { owner = "systemd-network"; restartUnits = [ "systemd-networkd.service" ]; }; }'';
      description = ''
        Secrets this host receives from the server's `secrets/<host>/<name>`,
        installed outside the Nix store before the switch, and put back at
        boot by `bento-secrets.service` from the agent's local copies (a
        unit that reads one at start and is not in its `restartUnits`
        should be ordered after that service).
      '';
    };

    # Health checks (issue 18): run after a switch, before it is confirmed;
    # a failing one rolls the host back (docs/agent.md, "Health checks").
    healthChecks = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            unit = mkOption {
              type = types.nullOr unitName;
              default = null;
              example = "nginx.service";
              description = "A systemd unit that must be active (`systemctl is-active`).";
            };
            command = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
              example = [
                "/run/current-system/sw/bin/pg_isready"
                "-q"
              ];
              description = "A command (program and arguments, no shell) that must exit 0.";
            };
            user = mkOption {
              type = types.str;
              default = "root";
              description = "The user a `command` check runs as.";
            };
            http = mkOption {
              type = types.nullOr (
                types.submodule {
                  options = {
                    url = mkOption {
                      type = types.strMatching "https?://[^/ ]+.*";
                      example = "http://127.0.0.1:8080/health";
                      description = "The URL to GET (redirects are followed only on the same host, at most 3).";
                    };
                    expectStatus = mkOption {
                      type = types.ints.between 100 599;
                      default = 200;
                      description = "The HTTP status the answer must have.";
                    };
                  };
                }
              );
              default = null;
              description = "An HTTP(S) GET that must answer `expectStatus`.";
            };
            timeout = mkOption {
              type = span;
              default = "30s";
              description = "Longest one attempt may take (a command is then stopped: SIGTERM, SIGKILL 5s later). At most 10min.";
            };
            retries = mkOption {
              type = types.ints.between 0 100;
              default = 2;
              description = "How many more attempts a failed attempt gets before the check fails.";
            };
            interval = mkOption {
              type = span;
              default = "5s";
              description = "Pause between two attempts. At most 10min.";
            };
            settle = mkOption {
              type = span;
              default = "0s";
              example = "10s";
              description = "Wait after the switch (or the boot) before the first attempt. At most 30min.";
            };
            continuous = mkOption {
              type = types.bool;
              default = false;
              description = ''
                Also run on every tick that applies nothing, and report the
                result (`bento status` shows the host `unhealthy: …`); such
                a failure rolls nothing back.
              '';
            };
          };
        }
      );
      default = { };
      example = literalExpression ''
        {
          nginx = { unit = "nginx.service"; settle = "5s"; continuous = true; };
          site.http.url = "http://127.0.0.1/health";
          db = { command = [ "''${pkgs.postgresql}/bin/pg_isready" ]; user = "postgres"; };
        }
      '';
      description = ''
        Health checks of this host. After a switch (for `operation = "boot"`:
        after the reboot into the new system) the agent runs them all, side by
        side, before it confirms the switch with the server; if any fails, it
        rolls back to the exact previous system, runs the checks against that
        one too, and reports `rolled-back` with reason `health-check`.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--verbose" ];
      description = "Extra arguments for `bento agent run`.";
    };

    # Signed publications (docs/mirrors.md, "Signing keys").
    publicationKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "bento.example.org-pub-1:MEvfnnMYCQk1Q6JnTV5YA7f9zqHObakbLU8UFrBgYEg=";
      description = ''
        The fleet's publication key (`bento keygen --publication` prints
        it; several, space-separated, during a rotation). When set, the
        agent refuses any manifest not signed by it, whichever server or
        mirror delivered it, and reports why; it also refuses an older
        publication than one it already accepted. Null: manifests are not
        verified (the pinned {option}`services.bento.serverHostKey` is the
        only trust).
      '';
    };

    maxPublicationAge = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "7d";
      description = ''
        Report a publication older than this (a systemd time span) as
        stale instead of applying it: bounds how old a publication a
        mirror can feed a host whose state was wiped. Null: off. The
        server must then publish at least that often
        ({option}`services.bento-server.deploy.enable`).
      '';
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.servers != [ ] || cfg.server != null && cfg.server != "";
          message = "services.bento.server must name the bento server (host name or address).";
        }
        {
          assertion = cfg.servers == [ ] || cfg.server == null && cfg.serverHostKey == null;
          message = "services.bento.servers and services.bento.server/serverHostKey are both set on host `${cfg.host}': list every server, the primary first, in services.bento.servers only.";
        }
        {
          assertion = builtins.all (s: builtins.match keyPattern s.hostKey != null && base64Blob (keyBlob s.hostKey)) cfg.servers;
          message = "services.bento.servers of host `${cfg.host}': each hostKey must be a whole public key such as \"ssh-ed25519 AAAA…\" or a known_hosts line (cat /etc/ssh/ssh_host_ed25519_key.pub on that server).";
        }
        {
          assertion = cfg.servers != [ ] || cfg.serverHostKey != null;
          message = ''
            services.bento.serverHostKey is not set. bento never trusts a server key on first use.
            Read the key on the server: cat /etc/ssh/ssh_host_ed25519_key.pub
            (or, checking its fingerprint out of band, ssh-keyscan -t ed25519 -p ${toString cfg.port} ${toString cfg.server})
            and set services.bento.serverHostKey = "ssh-ed25519 AAAA…";
          '';
        }
        {
          assertion = cfg.serverHostKey == null || builtins.match keyPattern cfg.serverHostKey != null;
          message = "services.bento.serverHostKey must be a public key such as \"ssh-ed25519 AAAA…\" or a known_hosts line, not `${toString cfg.serverHostKey}'.";
        }
        {
          assertion =
            cfg.serverHostKey == null
            || builtins.match keyPattern cfg.serverHostKey == null
            || base64Blob (keyBlob cfg.serverHostKey);
          message = "services.bento.serverHostKey of host `${cfg.host}' is not a valid key: its base64 part is cut or damaged. Copy the whole line again from the server: cat /etc/ssh/ssh_host_ed25519_key.pub";
        }
        {
          assertion = !(cfg.mode == "fetch" && cfg.selfUpdate);
          message = "services.bento.selfUpdate of host `${cfg.host}' needs services.bento.mode = \"build\": a host in fetch mode evaluates nothing, so it cannot update its inputs. Set selfUpdate = false or mode = \"build\".";
        }
        {
          # maxDelay 0 is no cap, for the agent too.
          assertion = spanSeconds cfg.retry.maxDelay == 0 || spanSeconds cfg.retry.initialDelay <= spanSeconds cfg.retry.maxDelay;
          message = "services.bento.retry.initialDelay (${cfg.retry.initialDelay}) of host `${cfg.host}' is longer than services.bento.retry.maxDelay (${cfg.retry.maxDelay}): the wait grows from initialDelay up to maxDelay.";
        }
        {
          assertion = !cfg.watch.enable || (spanSeconds cfg.watch.every >= 1 && spanSeconds cfg.watch.every <= 600);
          message = "services.bento.watch.every of host `${cfg.host}' is ${cfg.watch.every}: it must be from 1s to 10min.";
        }
        {
          assertion = cfg.reboot.command != [ ] && builtins.head cfg.reboot.command != "";
          message = "services.bento.reboot.command of host `${cfg.host}' is empty: give the command that reboots, such as [ \"systemctl\" \"reboot\" ].";
        }
        {
          assertion = builtins.match "[A-Za-z0-9_][A-Za-z0-9._-]*" userName != null && builtins.stringLength userName <= 31;
          message = "services.bento.user `${userName}' of host `${cfg.host}' is not a usable user name (letters, digits, '.', '_', '-', at most 31 characters: NixOS refuses longer ones); set services.bento.user.";
        }
        {
          assertion = !(builtins.isPath cfg.identityFile) && !(inStore cfg.identityFile);
          message = "services.bento.identityFile must be a string path outside the Nix store (a path literal copies the private key into the world-readable store).";
        }
        {
          assertion = !(inStore cfg.stateDir);
          message = "services.bento.stateDir must be outside the Nix store.";
        }
        {
          assertion = cfg.trigger.port != 0;
          message = "services.bento.trigger.port must be a port number (1-65535) or null.";
        }
      ]
      # Health checks: one kind each, durations the agent accepts.
      ++ mapAttrsToList (name: c: {
        assertion =
          builtins.length (builtins.filter (x: x) [
            (c.unit != null)
            (c.command != null && c.command != [ ])
            (c.http != null)
          ]) == 1;
        message = "services.bento.healthChecks.\"${name}\" of host `${cfg.host}' must set exactly one of unit, command (not empty) and http.";
      }) cfg.healthChecks
      ++ mapAttrsToList (name: c: {
        assertion =
          builtins.match "[A-Za-z0-9_][A-Za-z0-9._-]*" name != null
          && builtins.stringLength name <= 64
          && spanSeconds c.timeout >= 0.001
          && spanSeconds c.timeout <= 600
          && spanSeconds c.interval <= 600
          && spanSeconds c.settle <= 1800;
        message = "services.bento.healthChecks.\"${name}\" of host `${cfg.host}': the name must be letters, digits, '_', '-', '.' (at most 64), timeout from 1ms to 10min, interval at most 10min, settle at most 30min (got timeout ${c.timeout}, interval ${c.interval}, settle ${c.settle}).";
      }) cfg.healthChecks
      ++ mapAttrsToList (name: s: {
        assertion = safeSecretName name && hasPrefix "/" s.path && !(inStore s.path);
        message = "services.bento.secrets.\"${name}\": the name must be a plain file name and the path absolute and outside the Nix store (got `${s.path}').";
      }) cfg.secrets;

      warnings = optional (toString cfg.identityFile == defaultIdentityFile && !config.services.openssh.enable) ''
        services.bento.identityFile is this host's SSH host key, but services.openssh is off, so nothing
        creates ${defaultIdentityFile}: enable services.openssh, or install a key and point identityFile at it.
      '';

      environment.systemPackages = [ cfg.package ];

      # The agent's own validation of the file it will run with, when the
      # system is built (as nixpkgs runs `sshd -t` on sshd_config): what
      # the agent would refuse on every tick fails the build instead.
      # Skipped when the build machine cannot run the host's bento.
      system.checks = optional (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) configCheck;

      # For people and for `bento agent trigger`: the configuration the agent runs with.
      environment.etc.${agentConfigEtc}.source = configFile;

      systemd.tmpfiles.rules = [ "d ${toString cfg.stateDir} 0700 root root -" ];

      systemd.services.bento-agent = unitCommon // {
        description = "bento agent: update this host to the configuration its server publishes";
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = hardening // {
          Type = "oneshot";
          ExecStart = execLine (
            [
              bento
              "agent"
              "run"
              "--config"
              configFile
            ]
            ++ cfg.extraArgs
          );
          # Only the agent is stopped on timeout; a switch-to-configuration it
          # started is left to finish (as nixos-rebuild's is).
          KillMode = "process";
          TimeoutStartSec = cfg.timeout;
          # A stop during an activation waits for it (the agent defers
          # SIGTERM until the outcome is recorded): confirm window + margin.
          # With health checks: their longest run twice (new and old system).
          TimeoutStopSec = "${toString (builtins.ceil (spanSeconds cfg.confirmTimeout + 2 * healthSeconds) + 60)}s";
        };
      };

      systemd.timers.bento-agent = {
        description = "bento agent: poll the server";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.interval;
          RandomizedDelaySec = cfg.randomizedDelaySec;
          Persistent = cfg.persistent;
        };
      };
    }

    # Secrets under /run are gone after a reboot, and the agent's first
    # tick may be minutes away (or the server unreachable): put the applied
    # version's secrets back from the agent's local copies at boot, before
    # their restartUnits (and before the agent) start. It never needs the
    # network. A switch that adds this unit starts it while the agent that
    # runs the switch holds its lock: it then gives up after --lock-wait
    # (that tick installs the secrets itself), and "-" keeps that from
    # failing the switch; failures are in its journal.
    (mkIf (cfg.secrets != { }) {
      systemd.services.bento-secrets = unitCommon // {
        description = "bento agent: put this host's secrets back in place after a boot";
        wantedBy = [ "multi-user.target" ];
        # Early (after the file systems and users, not after basic.target),
        # so that early consumers such as systemd-networkd can wait for it.
        unitConfig = unitCommon.unitConfig // {
          DefaultDependencies = false;
        };
        after = [ "sysinit.target" ];
        before = unique ([ "bento-agent.service" ] ++ concatLists (mapAttrsToList (_: s: s.restartUnits) cfg.secrets));
        serviceConfig = hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart =
            "-"
            + execLine [
              bento
              "agent"
              "install-secrets"
              "--config"
              configFile
              "--no-restart"
              "--lock-wait"
              "5s"
            ];
          KillMode = "process";
          TimeoutStartSec = "5min";
        };
      };
    })

    # The local trigger: `bento agent trigger-server` runs each requested
    # tick as a child process in its own process group. A switch that
    # changes the unit (a new bento) restarts it, and KillMode=process
    # stops only the server: a tick in progress, even the one running that
    # switch, goes on (the server does not wait for it). One server for
    # every address (unix socket, loopback port): one tick at a time
    # across them.
    # Watch mode: like the trigger server, the watch runs each tick as a
    # child process, so a switch that restarts it (restartIfChanged, to run
    # the new bento) never cuts the tick short; KillMode=process leaves the
    # tick alone and the watch returns at once on SIGTERM.
    (mkIf cfg.watch.enable {
      systemd.services.bento-watch = unitCommon // {
        restartIfChanged = true;
        unitConfig = { };
        description = "bento agent: watch the server for a new publication";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = hardening // {
          Type = "simple";
          ExecStart = execLine [
            bento
            "agent"
            "watch"
            "--config"
            "/etc/${agentConfigEtc}"
            "--every"
            cfg.watch.every
          ];
          KillMode = "process";
          Restart = "always";
          RestartSec = "10s";
        };
      };
    })

    (mkIf cfg.trigger.enable {
      systemd.tmpfiles.rules = [ "d ${dirOf cfg.trigger.socket} 0755 root root -" ];
      systemd.services.bento-trigger = unitCommon // {
        restartIfChanged = true;
        unitConfig = { };
        description = "bento agent: local trigger on ${concatStringsSep " and " triggerAddresses}";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = hardening // {
          Type = "simple";
          # /etc/bento/agent.json, not the store file: a change of the
          # configuration alone does not restart this server, and each
          # tick it runs reads the file anew.
          ExecStart = execLine (
            [
              bento
              "agent"
              "trigger-server"
              "--config"
              "/etc/${agentConfigEtc}"
            ]
            ++ concatMap (address: [
              "--listen"
              address
            ]) triggerAddresses
          );
          KillMode = "process";
          Restart = "on-failure";
          RestartSec = "10s";
        };
      };
    })
  ]);
}
