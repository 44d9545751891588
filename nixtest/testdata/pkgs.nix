# Test-only stand-in for the few nixpkgs packages and builders bento's
# modules use. Packages are derivation-shaped attribute sets with fixed
# store paths (nothing is built); writeText really writes its file into
# the store (builtins.toFile), so tests can read what a unit points at.
# runCommand makes a derivation that `nix build` really builds.
let
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
in
{
  writeText = name: text: builtins.toFile name text;
  # A real derivation (built with /bin/sh, so `nix build` runs it for
  # real: the tests run without a sandbox): the module's build-time checks.
  runCommand =
    name: env: buildCommand:
    derivation (
      env
      // {
        inherit name;
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [
          "-ec"
          buildCommand
        ];
      }
    );
  stdenv = {
    buildPlatform.canExecute = _: true;
    hostPlatform.system = "x86_64-linux";
  };
  # The flake passes its version (a package distinct from the modules'
  # own callPackage default, which passes none).
  callPackage =
    path: args:
    if builtins.pathExists path then
      fake (if args ? version then "bento-${args.version}" else "bento")
    else
      throw "callPackage: ${toString path} does not exist";
  coreutils = fake "coreutils";
  gnutar = fake "gnutar";
  gzip = fake "gzip";
  xz = fake "xz";
  gitMinimal = fake "git-minimal";
  age = fake "age";
  nix = fake "nix";
  openssh = fake "openssh";
  systemd = fake "systemd";
}
