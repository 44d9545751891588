# bento's Nix helpers, exported as the flake output `lib`.
# Plain builtins only: they evaluate without nixpkgs.
let
  inherit (builtins)
    attrNames
    filter
    listToAttrs
    match
    ;

  # Host names become directory and user names (see fleet.ValidateName).
  validHostName = name: match "[A-Za-z0-9][A-Za-z0-9._-]*" name != null;

  # NixOS refuses user names of 32 characters or more (users-groups.nix:
  # "longer than 31 characters"), so bento's limit is 31 too.
  validUserName = name: match "[A-Za-z0-9_][A-Za-z0-9._-]*" name != null && builtins.stringLength name <= 31;

  checkName =
    name:
    if validHostName name then
      name
    else
      throw "bento: host name `${name}' is not usable: host names must match ^[A-Za-z0-9][A-Za-z0-9._-]*$ because they become user and directory names; rename that nixosConfigurations entry";

  self = {
    inherit validHostName validUserName;

    /**
      The `services.bento-server.hosts` of a fleet, derived from the fleet
      flake's own nixosConfigurations, so the flake is the only place a host
      is declared:

        services.bento-server.hosts =
          bento.lib.hostsFromNixosConfigurations self.nixosConfigurations;

      Every configuration that imports the client module and sets
      `services.bento.enable = true` becomes a host named after its
      nixosConfigurations attribute, with `user = services.bento.user` and
      `publicKeys = [ services.bento.hostPublicKey ]` (empty while that
      option is null: the server module then warns that the host cannot log
      in). Other configurations, the server's own included unless it is also
      a client, are left out.
    */
    hostsFromNixosConfigurations =
      nixosConfigurations:
      let
        bentoOf = name: nixosConfigurations.${name}.config.services.bento or null;
        enabled = filter (
          name:
          let
            b = bentoOf name;
          in
          b != null && (b.enable or false)
        ) (attrNames nixosConfigurations);
      in
      listToAttrs (
        map (
          name:
          let
            b = bentoOf name;
            key = b.hostPublicKey or null;
          in
          {
            name = checkName name;
            value = {
              inherit (b) user;
              publicKeys = if key == null then [ ] else [ key ];
            };
          }
        ) enabled
      );

    # The same, under the name some notes use.
    bentoHostsFromFleet = self.hostsFromNixosConfigurations;
  };
in
self
