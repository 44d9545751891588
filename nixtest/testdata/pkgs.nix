# Test-only stand-in for the few nixpkgs packages and builders bento's
# modules use. Packages are derivation-shaped attribute sets with fixed
# store paths (nothing is built); writeText really writes its file into
# the store (builtins.toFile), so tests can read what a unit points at.
let
  fake = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };
in
{
  writeText = name: text: builtins.toFile name text;
  callPackage =
    path: _args:
    if builtins.pathExists path then fake "bento" else throw "callPackage: ${toString path} does not exist";
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
