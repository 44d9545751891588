# services.bento-server: the server half of bento.
#
# One SFTP chroot per host under chrootRoot, one system user per host in
# one group, an sshd `Match Group` block that locks those users into
# internal-sftp inside their own chroot, the tmpfiles rules for sshd's
# ownership rules, an optional timer running `bento deploy`, and an
# optional binary cache for the clients.
#
# (The client's options own `services.bento`, whose `server` is the
# server's address, so the server's options cannot live under
# `services.bento.server`.)
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    attrNames
    attrValues
    concatLists
    concatMapStringsSep
    filterAttrs
    hasPrefix
    literalExpression
    mapAttrs'
    mapAttrsToList
    mkAfter
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    nameValuePair
    types
    unique
    ;

  cfg = config.services.bento-server;
  root = toString cfg.chrootRoot;

  escapeArg = arg: builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
  execLine = args: concatMapStringsSep " " escapeArg args;

  validHostName = (import ./lib.nix).validHostName;
  inherit ((import ./lib.nix)) validUserName;

  # `restrict` (OpenSSH 7.2) turns off every forwarding, the pty and
  # ~/.ssh/rc for the key, on top of the Match block. Keys that already
  # carry options are left as they are.
  restrictKey = key: if builtins.match "(ssh-|ecdsa-|sk-).*" key != null then "restrict ${key}" else key;

  hostModule =
    { name, ... }:
    {
      options = {
        user = mkOption {
          type = types.str;
          default = name;
          defaultText = literalExpression "<name>";
          description = "The host's SFTP user on this server (its `services.bento.user`).";
        };
        publicKeys = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@web-1" ];
          description = "Public keys the host logs in with (its `services.bento.hostPublicKey`).";
        };
      };
    };

  # sshd: every user of the group is locked into internal-sftp inside its
  # home, which is its chroot. Appended last (mkAfter) because a Match
  # block runs to the end of the file.
  matchBlock = ''

    # bento (services.bento-server): hosts may only use SFTP, inside their own chroot.
    Match Group ${cfg.group}
      ChrootDirectory %h
      ForceCommand internal-sftp
      PermitTTY no
      DisableForwarding yes
      AllowTcpForwarding no
      AllowAgentForwarding no
      AllowStreamLocalForwarding no
      X11Forwarding no
      PermitTunnel no
      PermitListen none
      PermitOpen none
      GatewayPorts no
      PermitUserRC no
      PasswordAuthentication no
      KbdInteractiveAuthentication no
      AuthenticationMethods publickey
  '';

  deployCommand = execLine (
    [
      "${cfg.package}/bin/bento"
      "deploy"
      "--flake"
      cfg.flake
      "--chroot-root"
      root
      "--reports-max-bytes"
      (toString cfg.reports.maxBytes)
      "--reports-max-files"
      (toString cfg.reports.maxFiles)
      "--retention"
      cfg.retention
    ]
    # Signed publications.
    ++ lib.optionals (cfg.publicationKeyFile != null) [
      "--publication-key"
      cfg.publicationKeyFile
    ]
    ++ lib.optionals (cfg.nextPublicationKey != null) [
      "--next-publication-key"
      cfg.nextPublicationKey
    ]
    ++ cfg.deploy.extraArgs
  );

  users = map (h: h.user) (attrValues cfg.hosts);
in
{
  options.services.bento-server = {
    enable = mkEnableOption "the bento server: one SFTP chroot, user and sshd rule per host of the fleet";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../nix/package.nix { };
      defaultText = literalExpression "bento.packages.\${system}.bento (through the flake), else pkgs.callPackage (bento + \"/nix/package.nix\") { }";
      description = "The bento package (for the deploy timer and for `bento` on the server's PATH): through the flake's `nixosModules`, the flake's own build; imported as a file, one built with this host's nixpkgs (which needs Go 1.26).";
    };

    chrootRoot = mkOption {
      type = types.path;
      default = "/home/chroot";
      description = ''
        Directory holding one chroot per host, `<chrootRoot>/<host>`. sshd
        requires it and every parent to be owned by root and writable by
        nobody else.
      '';
    };

    retention = mkOption {
      type = types.str;
      default = "1h";
      example = "6h";
      description = ''
        How long `bento deploy` keeps a published file in a host's chroot
        after the last manifest naming it was replaced (a systemd time span
        or a Go duration): a host that read a manifest up to this long ago
        still finds every file it names. Longer than the slowest host's
        download.
      '';
    };

    group = mkOption {
      type = types.str;
      default = "bento";
      description = "Group of the hosts' SFTP users; sshd's `Match Group` block applies to it.";
    };

    hosts = mkOption {
      type = types.attrsOf (types.submodule hostModule);
      default = { };
      example = literalExpression "bento.lib.hostsFromNixosConfigurations self.nixosConfigurations";
      description = ''
        The fleet's hosts, by name (their nixosConfigurations attribute).
        Each gets a system user, a chroot `<chrootRoot>/<name>` and a
        writable `<chrootRoot>/<name>/reports`. Derive them from the fleet
        flake itself with `bento.lib.hostsFromNixosConfigurations`.
      '';
    };

    maxStartups = mkOption {
      type = types.nullOr types.str;
      # After an outage of the server every host's timer has fired
      # (Persistent=true) and each agent retries with full jitter, so up to
      # every host may be mid-handshake at once. Random early drop should
      # start only above that (start = the host count, at least 100) and
      # refusals only at twice it. An unauthenticated connection costs sshd
      # one short-lived process (about 1 MiB); a handshake takes
      # milliseconds of CPU, so even 1000 at once clear in seconds
      # (bench/burst). OpenSSH's 10:30:100 refused 20 of 300 ticks there.
      default =
        let
          hosts = builtins.length (attrNames cfg.hosts);
          start = if hosts > 100 then hosts else 100;
        in
        "${toString start}:30:${toString (2 * start)}";
      defaultText = literalExpression ''"<max 100 hosts>:30:<2 × that>"'';
      description = ''
        sshd's `MaxStartups` (`start:rate:full`): concurrent unauthenticated
        connections before sshd starts refusing some. The default is sized
        from the number of hosts, so that every host can connect at once
        after an outage of the server; OpenSSH's own (10:30:100) is too low
        for a fleet. null leaves sshd's setting alone.

        On OpenSSH 9.8 and later, `PerSourcePenalties` also delays addresses
        that failed to log in: hosts behind one NAT share an address, so one
        misconfigured host can delay the others. Exempt such addresses with
        `services.openssh.settings.PerSourcePenaltyExemptList`.
      '';
    };

    reports = {
      maxBytes = mkOption {
        type = types.ints.positive;
        default = 64 * 1024 * 1024;
        defaultText = literalExpression "64 * 1024 * 1024";
        description = ''
          Bytes one host may keep in its `reports/` (the sum of its files'
          sizes). `bento deploy`, `bento status` and `bento logs` enforce it
          whenever they read reports: they remove the host's oldest logs
          beyond it, and show a host still over it as `unreadable: reports
          over limit`. The module passes it to the deploy timer and, through
          `BENTO_REPORTS_MAX_BYTES`, to `bento` run from a login shell. The
          agent's own logs stay far below it (`logsKept` × `logMaxBytes`,
          20 × 1 MiB by default). This bounds what the server keeps, not what
          a host can write between two reads: see
          {option}`services.bento-server.reports.tmpfs`.
        '';
      };

      maxFiles = mkOption {
        type = types.ints.positive;
        default = 500;
        description = ''
          Files (and directories) one host may keep in its `reports/`,
          enforced like {option}`services.bento-server.reports.maxBytes`
          (`BENTO_REPORTS_MAX_FILES`).
        '';
      };

      tmpfs = mkEnableOption ''
        a tmpfs of its own for each host's `reports/`, of
        {option}`services.bento-server.reports.maxBytes` bytes and
        {option}`services.bento-server.reports.maxFiles` files, mounted
        `nosuid,nodev,noexec`: the kernel refuses a host's write beyond the
        limits the moment it happens, and no host can fill the filesystem
        holding the chroots and the cache. Reports then live in memory (and
        swap): a reboot of the server empties them until each host reports
        again (one poll interval; old logs are gone), and the worst case is
        every host full, hosts × maxBytes of memory. See docs/security.md for
        disk quotas instead'';
    };

    flake = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/srv/fleet";
      description = "The fleet flake `bento deploy` publishes (a path or flake reference); required by the deploy timer.";
    };

    deploy = {
      enable = mkEnableOption "a timer that runs `bento deploy` on {option}`services.bento-server.flake`";

      interval = mkOption {
        type = types.str;
        default = "*:0/15";
        description = "When `bento deploy` runs: a systemd `OnCalendar=` expression.";
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--keep-going" ];
        description = "Extra arguments for `bento deploy`.";
      };
    };

    # Mirrors (docs/mirrors.md): push after each deploy, pull the reports back.
    mirrors = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            address = mkOption {
              type = types.str;
              example = "mirror.example.org";
              description = "Host name or address of the mirror (another bento server with the same hosts).";
            };
            port = mkOption {
              type = types.port;
              default = 22;
              description = "Its SSH port.";
            };
            user = mkOption {
              type = types.str;
              default = "root";
              description = "The account push logs in as there: one that may write its chroot root (root, with the key restricted to internal-sftp).";
            };
            chrootRoot = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "The mirror's chroot root; this server's {option}`services.bento-server.chrootRoot` when null.";
            };
            hostKey = mkOption {
              type = types.str;
              example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@mirror";
              description = "The mirror's SSH host public key: push never trusts a key on first use.";
            };
          };
        }
      );
      default = [ ];
      description = ''
        Mirrors that `bento mirror push` fills after every run of `bento
        deploy` (the deploy timer's), and that `bento mirror pull-reports`
        brings the hosts' reports back from every
        {option}`services.bento-server.mirrorPullInterval`. Hosts list them in
        {option}`services.bento.servers`.
      '';
    };

    mirrorIdentityFile = mkOption {
      type = types.str;
      default = "/var/lib/bento/mirror-key";
      description = "Private key (unencrypted, outside the Nix store) that push and pull-reports log in to the mirrors with.";
    };

    mirrorPullInterval = mkOption {
      type = types.str;
      default = "*:0/5";
      description = "When `bento mirror pull-reports` runs: a systemd `OnCalendar=` expression.";
    };

    mirrorPushKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@bento" ];
      description = ''
        On a mirror: the public keys of the primaries allowed to push into
        this server's chroots. Each becomes a key of root restricted to
        SFTP (`restrict,command="internal-sftp"`): the chroots are root's,
        as sshd requires, so only root can write a manifest there.
      '';
    };

    # History (bento history): what the server observed, in
    # <chrootRoot>/.bento-state/history.db.
    history = {
      retention = mkOption {
        type = types.str;
        default = "90d";
        example = "1y";
        description = ''
          How long the server's history (`bento history`: each publication,
          each change of a host's report, each rollout step) keeps an
          event, a systemd time span or a Go duration. Every `bento deploy`
          prunes older events; the module passes it to the deploy timer and,
          through `BENTO_HISTORY_RETENTION`, to `bento` run from a login
          shell. An event takes about 400 bytes: a thousand hosts with a
          deploy and four report changes a day take 180 MB over 90 days
          (docs/status.md).
        '';
      };
    };

    # Rollouts in waves (docs/rollout.md): a timer running `bento rollout step`.
    rollout = {
      enable = mkEnableOption "a timer that runs `bento rollout step`: it publishes a rollout's next wave once the current one reported healthy, and halts it when a host failed (a no-op without a running rollout)";

      interval = mkOption {
        type = types.str;
        default = "*:0/5";
        description = "When `bento rollout step` runs: a systemd `OnCalendar=` expression. A wave is published at most one interval after the previous one became healthy.";
      };
    };

    cache = {
      enable = mkEnableOption "a binary cache of the server's store for the clients (nix-serve), signed with {option}`services.bento-server.cache.secretKeyFile`";

      secretKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/var/lib/bento/cache-key.sec";
        description = ''
          Signing key of the cache (`nix key generate-secret --key-name
          bento.example.org-1`). Clients trust its public half through
          {option}`services.bento.trustedPublicKeys`.
        '';
      };

      port = mkOption {
        type = types.port;
        default = 5000;
        description = "Port of the cache; clients add `http://<server>:<port>` to {option}`services.bento.substituters`.";
      };

      bindAddress = mkOption {
        type = types.str;
        default = "0.0.0.0";
        description = "Address the cache listens on.";
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the cache's port in the firewall.";
      };
    };

    # Signed publications (docs/mirrors.md, "Signing keys").
    publicationKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/bento/publication-key.sec";
      description = ''
        The key that signs every manifest the deploy timer publishes
        (`bento keygen --publication`); hosts pin its public half in
        {option}`services.bento.publicationKey`. A key of its own, not the
        cache's: mirrors and builders never hold it. Null: `bento deploy`
        signs with /var/lib/bento/publication-key.sec when that exists.
      '';
    };

    nextPublicationKey = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        Key rotation: the next publication key (name:base64), announced in
        every manifest under the current key's signature; hosts pin it on
        applying one. See docs/mirrors.md, "Signing keys".
      '';
      };

    # bento serve (docs/serve.md): the fleet's status on a read-only web page.
    dashboard = {
      enable = mkEnableOption ''
        `bento serve`: the fleet's status, each host's history and latest log
        on a read-only web page, with /api/status and /metrics. It has no
        authentication: keep it on loopback and open it through
        `ssh -L 8470:127.0.0.1:8470 <server>`'';

      listen = mkOption {
        type = types.str;
        default = "127.0.0.1:8470";
        example = "unix:/run/bento-serve/serve.sock";
        description = ''
          Where `bento serve` listens: `host:port` or `unix:/path`. An
          address beyond loopback also needs
          {option}`services.bento-server.dashboard.allowRemote`.
        '';
      };

      allowRemote = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Let {option}`services.bento-server.dashboard.listen` be an address
          beyond loopback. Anyone who reaches it sees every host, its
          versions, errors and logs: put a reverse proxy with authentication
          in front, or use `ssh -L` instead.
        '';
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = hasPrefix "/" root && !(hasPrefix "${builtins.storeDir}/" root) && root != "/";
          message = "services.bento-server.chrootRoot must be an absolute directory outside the Nix store (got `${root}').";
        }
        {
          assertion = builtins.length (unique users) == builtins.length users;
          message = "services.bento-server.hosts: two hosts share an SFTP user; each host needs its own.";
        }
        {
          assertion = !(builtins.elem "root" users);
          message = "services.bento-server.hosts: no host may use the root user.";
        }
      ]
      ++ concatLists (
        mapAttrsToList (name: h: [
          {
            assertion = validHostName name;
            message = "services.bento-server.hosts: `${name}' is not a usable host name (^[A-Za-z0-9][A-Za-z0-9._-]*$).";
          }
          {
            assertion = validUserName h.user;
            message = "services.bento-server.hosts.${name}.user `${h.user}' is not a usable user name for host `${name}' (letters, digits, '.', '_', '-', at most 31 characters: NixOS refuses longer ones); set services.bento.user on that host to a shorter name.";
          }
        ]) cfg.hosts
      );

      warnings = map (name: "services.bento-server: host `${name}' has no public key (services.bento.hostPublicKey on that host), so it cannot log in yet.") (
        attrNames (filterAttrs (_: h: h.publicKeys == [ ]) cfg.hosts)
      );

      environment.systemPackages = [ cfg.package ];

      # bento status and logs, run by an admin, enforce the same limits as
      # the deploy timer.
      environment.variables = {
        BENTO_REPORTS_MAX_BYTES = toString cfg.reports.maxBytes;
        BENTO_REPORTS_MAX_FILES = toString cfg.reports.maxFiles;
        BENTO_HOST_GROUP = cfg.group;
      };

      users.groups.${cfg.group} = { };

      users.users = mapAttrs' (
        name: h:
        nameValuePair h.user {
          isSystemUser = true;
          group = cfg.group;
          description = "bento SFTP user of host ${name}";
          # sshd's ChrootDirectory %h: the home is the chroot, owned by root.
          home = "${root}/${name}";
          createHome = false;
          openssh.authorizedKeys.keys = map restrictKey h.publicKeys;
        }
      ) cfg.hosts;

      # sshd refuses a chroot that is not root-owned and unwritable by others;
      # `d` also fixes the owner and mode of existing directories.
      systemd.tmpfiles.rules = [
        "d ${root} 0755 root root -"
      ]
      ++ concatLists (
        mapAttrsToList (name: h: [
          "d ${root}/${name} 0755 root root -"
          "d ${root}/${name}/reports 0755 ${h.user} ${cfg.group} -"
        ]) cfg.hosts
      );

      services.openssh = {
        enable = mkDefault true;
        settings.MaxStartups = mkIf (cfg.maxStartups != null) (mkDefault cfg.maxStartups);
        extraConfig = mkAfter matchBlock;
      };
    }

    (mkIf cfg.reports.tmpfs {
      # The mount point is created by systemd; systemd-tmpfiles (after
      # local-fs.target) then gives the mounted directory to the host's user.
      fileSystems = mapAttrs' (
        name: h:
        nameValuePair "${root}/${name}/reports" {
          device = "tmpfs";
          fsType = "tmpfs";
          options = [
            "size=${toString cfg.reports.maxBytes}"
            # The mount's own directory is an inode too.
            "nr_inodes=${toString (cfg.reports.maxFiles + 1)}"
            "mode=0755"
            "nosuid"
            "nodev"
            "noexec"
          ];
        }
      ) cfg.hosts;
    })

    (mkIf cfg.deploy.enable {
      assertions = [
        {
          assertion = cfg.flake != null;
          message = "services.bento-server.deploy.enable needs services.bento-server.flake (the fleet flake to publish).";
        }
      ];

      systemd.services.bento-deploy = {
        description = "bento deploy: build and publish the fleet";
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        # Publishing must never be cut short by a switch of the server itself.
        restartIfChanged = false;
        unitConfig.X-StopOnRemoval = false;
        path = [
          pkgs.coreutils
          pkgs.gitMinimal
          config.nix.package
          config.programs.ssh.package
        ];
        environment = {
          HOME = "/root";
          # bento deploy refuses a host whose user is outside this group.
          BENTO_HOST_GROUP = cfg.group;
        }
        // config.networking.proxy.envVars;
        serviceConfig = {
          Type = "oneshot";
          ExecStart = deployCommand;
          # A hung build or lock must not block the timer forever, silently;
          # override with systemd.services.bento-deploy.serviceConfig.
          TimeoutStartSec = lib.mkDefault "4h";
        };
      };

      systemd.timers.bento-deploy = {
        description = "bento deploy: publish the fleet periodically";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.deploy.interval;
          Persistent = true;
        };
      };
    })

    (mkIf (cfg.mirrors != [ ]) (
      let
        mirrorRoot = m: if m.chrootRoot == null then root else m.chrootRoot;
        bracketed = m: if builtins.match ".*:.*" m.address != null then "[${m.address}]" else m.address;
        mirrorURL = m: "ssh://${m.user}@${bracketed m}:${toString m.port}${mirrorRoot m}";
        knownHosts = pkgs.writeText "bento-mirrors-known-hosts" (
          concatMapStringsSep "" (m: "[${m.address}]:${toString m.port} ${m.hostKey}\n") cfg.mirrors
        );
        mirrorCommand =
          verb:
          execLine (
            [
              "${cfg.package}/bin/bento"
              "mirror"
              verb
              "--chroot-root"
              root
              "--known-hosts"
              (toString knownHosts)
              "--identity"
              cfg.mirrorIdentityFile
            ]
            ++ map mirrorURL cfg.mirrors
          );
        mirrorUnit = verb: {
          description = "bento mirror ${verb}";
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          restartIfChanged = false;
          serviceConfig = {
            Type = "oneshot";
            ExecStart = mirrorCommand verb;
            TimeoutStartSec = lib.mkDefault "1h";
          };
        };
      in
      {
        assertions = [
          {
            assertion = !(hasPrefix "/nix/store/" cfg.mirrorIdentityFile);
            message = "services.bento-server.mirrorIdentityFile must be outside the Nix store (a private key).";
          }
        ];
        systemd.services.bento-mirror-push = mirrorUnit "push";
        systemd.services.bento-mirror-pull-reports = mirrorUnit "pull-reports";
        # After every deploy, whether or not some host failed: the others
        # were published.
        systemd.services.bento-deploy.unitConfig = mkIf cfg.deploy.enable {
          OnSuccess = [ "bento-mirror-push.service" ];
          OnFailure = [ "bento-mirror-push.service" ];
        };
        systemd.timers.bento-mirror-pull-reports = {
          description = "bento mirror pull-reports: bring the hosts' reports back from the mirrors";
          wantedBy = [ "timers.target" ];
          timerConfig = {
            OnCalendar = cfg.mirrorPullInterval;
            Persistent = true;
          };
        };
      }
    ))

    (mkIf (cfg.mirrorPushKeys != [ ]) {
      services.openssh.settings.PermitRootLogin = mkDefault "prohibit-password";
      users.users.root.openssh.authorizedKeys.keys = map (k: ''restrict,command="internal-sftp" ${k}'') cfg.mirrorPushKeys;
    })

    # History (bento history): the retention reaches every bento deploy.
    {
      environment.variables.BENTO_HISTORY_RETENTION = cfg.history.retention;
    }
    (mkIf cfg.deploy.enable {
      systemd.services.bento-deploy.environment.BENTO_HISTORY_RETENTION = cfg.history.retention;
    })

    # Rollouts in waves: the step timer (docs/rollout.md).
    (mkIf cfg.rollout.enable {
      systemd.services.bento-rollout-step = {
        description = "bento rollout step: publish a rollout's next wave when the current one is healthy";
        restartIfChanged = false;
        unitConfig.X-StopOnRemoval = false;
        path = [
          pkgs.coreutils
          config.nix.package
        ];
        environment = {
          HOME = "/root";
          BENTO_HOST_GROUP = cfg.group;
        };
        serviceConfig = {
          Type = "oneshot";
          ExecStart = execLine [
            "${cfg.package}/bin/bento"
            "rollout"
            "step"
            "--chroot-root"
            root
          ];
          TimeoutStartSec = lib.mkDefault "1h";
        };
      };

      systemd.timers.bento-rollout-step = {
        description = "bento rollout step: advance a rollout periodically";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.rollout.interval;
          Persistent = true;
        };
      };
    })

    (mkIf cfg.cache.enable {
      assertions = [
        {
          assertion = cfg.cache.secretKeyFile != null;
          message = "services.bento-server.cache.enable needs services.bento-server.cache.secretKeyFile: clients only accept signed paths.";
        }
      ];
      services.nix-serve = {
        enable = true;
        inherit (cfg.cache) port bindAddress openFirewall;
        secretKeyFile = cfg.cache.secretKeyFile;
      };
    })

    # bento serve (docs/serve.md). Root, sandboxed: the chroots' files belong
    # to root and to each host's own user (with the modes the host chose),
    # the build records to root, and the history is shared with bento
    # deploy; a dedicated user would need read access to everything a host
    # uploads and write access to root's state. So: root with only the
    # capability to read any file, every path read-only but the history's
    # directory (over-limit reports/ are trimmed by deploy and status, not
    # by the dashboard).
    (mkIf cfg.dashboard.enable {
      systemd.services.bento-serve = {
        description = "bento serve: the fleet's status on a read-only web page";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        path = [ config.nix.package ];
        environment = {
          HOME = "/var/cache/bento-serve";
          XDG_CACHE_HOME = "/var/cache/bento-serve";
          NIX_REMOTE = "daemon";
        };
        serviceConfig = {
          ExecStart = execLine (
            [
              "${cfg.package}/bin/bento"
              "serve"
              "--listen"
              cfg.dashboard.listen
              "--chroot-root"
              root
              "--reports-max-bytes"
              (toString cfg.reports.maxBytes)
              "--reports-max-files"
              (toString cfg.reports.maxFiles)
            ]
            ++ (if cfg.flake != null then [ "--flake" cfg.flake ] else [ "--no-eval" ])
            ++ lib.optional cfg.dashboard.allowRemote "--allow-remote"
          );
          Restart = "on-failure";
          RestartSec = "5s";
          CacheDirectory = "bento-serve";
          RuntimeDirectory = "bento-serve";
          RuntimeDirectoryMode = "0750";
          UMask = "0077";
          CapabilityBoundingSet = [ "CAP_DAC_READ_SEARCH" ];
          AmbientCapabilities = [ ];
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = "read-only";
          ReadWritePaths = [ "${root}/.bento-state" ];
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          ProtectProc = "invisible";
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" ];
        };
      };
      systemd.tmpfiles.rules = [ "d ${root}/.bento-state 0700 root root -" ];
    })
  ]);
}
