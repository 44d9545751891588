# The bento package. Used by the flake (packages, overlay) and as the
# default of services.bento.package / services.bento-server.package, so it
# is built with the host's own nixpkgs.
#
# vendorHash: the hash of `go mod vendor` for this tree. When a Go
# dependency changes (go.mod, go.sum, or a new import of an existing one),
# `go test ./nixtest -run TestVendorHash` fails and prints the new value to
# paste below. Nothing else needs editing.
{
  lib,
  buildGo126Module ? null,
  buildGoModule,
  version ? "0.1.0-dev",
}:

let
  # go.mod says `go 1.26`; nixpkgs without buildGo126Module falls back to
  # buildGoModule, which only works once its Go is 1.26 or newer.
  buildGo = if buildGo126Module != null then buildGo126Module else buildGoModule;
  root = ../.;
in
buildGo {
  pname = "bento";
  inherit version;

  # Only what `go build` and `go mod vendor` read: every .go file (tests
  # included, since `go mod vendor` also vendors their imports), go.mod and
  # go.sum. Editing docs, modules or templates does not rebuild bento. A
  # //go:embed of a non-Go file must be added here (TestPackageSource says so).
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/go.mod")
      (root + "/go.sum")
      (lib.fileset.fileFilter (file: file.hasExt "go") root)
      # bento serve's page: its //go:embed assets.
      (root + "/serve/assets")
    ];
  };

  vendorHash = "sha256-KOrxAZsz4LRpFBbwMYpEXjMH/P6GXZ7bbROmRcEd26o=";

  subPackages = [ "cmd/bento" ];
  ldflags = [
    "-s"
    "-w"
    "-X main.version=${version}"
  ];

  # bento's tests run real Nix and a real sshd, which the build sandbox has
  # neither of; CI runs them (scripts/test.sh).
  doCheck = false;

  meta = {
    description = "Pull-based deployment for a fleet of NixOS machines described by one flake";
    homepage = "https://github.com/bento-nix/bento";
    mainProgram = "bento";
    platforms = lib.platforms.linux;
  };
}
