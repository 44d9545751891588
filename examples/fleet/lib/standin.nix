# A stand-in for nixpkgs.lib.nixosSystem, so this example runs offline.
# It returns { config = { … system.build.toplevel … }; } like NixOS does,
# with exactly the parts bento touches: bin/switch-to-configuration, kernel,
# initrd, kernel-modules, kernel-params and nixos-version.
{ name, module }:
let
  system = "x86_64-linux";
  sh = "/bin/sh";
  cfg = {
    networking.hostName = name;
    nixpkgs.hostPlatform.system = system;
    services.bento = module.services.bento or { };
  };
  failActivation = module.system.failActivation or false;
  # How long the activation takes (the demo makes one slow, to show a
  # tick's live progress in bento status).
  activationSeconds = module.system.activationSeconds or 0;
  part = kind: derivation {
    name = "standin-${kind}-1";
    inherit system;
    builder = sh;
    args = [ "-c" "/bin/mkdir -p $out && /bin/echo '${kind}' > $out/${kind}" ];
  };
  switch = ''
    #!/bin/sh
    self=$(/bin/dirname "$(/bin/dirname "$0")")
    /bin/echo "switch-to-configuration $1: ${name} (${module.system.motd or ""})"
    ${if activationSeconds > 0 then "/bin/sleep ${toString activationSeconds}" else ""}
    ${if failActivation then ''
      /bin/echo "error: unit 'shop.service' failed to start (this example host fails on purpose)" >&2
      exit 4
    '' else ''
      # On NixOS the activation script points /run/current-system here;
      # bento's demo passes that path in BENTO_DEMO_CURRENT_SYSTEM.
      if [ -n "$BENTO_DEMO_CURRENT_SYSTEM" ] && [ "$1" != boot ]; then
        /bin/ln -sfn "$self" "$BENTO_DEMO_CURRENT_SYSTEM"
      fi
    ''}
  '';
  toplevel = derivation {
    name = "nixos-system-${name}";
    inherit system switch;
    passAsFile = [ "switch" ];
    builder = sh;
    args = [ "-c" ''
      /bin/mkdir -p $out/bin
      /bin/cp $switchPath $out/bin/switch-to-configuration
      /bin/chmod 755 $out/bin/switch-to-configuration
      /bin/ln -s ${part "kernel"}/kernel $out/kernel
      /bin/ln -s ${part "initrd"}/initrd $out/initrd
      /bin/ln -s ${part "modules"} $out/kernel-modules
      /bin/echo -n "quiet" > $out/kernel-params
      /bin/echo "25.11-standin" > $out/nixos-version
    '' ];
  };
in {
  config = cfg // { system.build.toplevel = toplevel; };
}
