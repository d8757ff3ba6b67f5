{
  description = "deploy: declarative deployment of Linux fleets, no Nix needed on either side";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        deploy = pkgs.buildGoModule {
          pname = "deploy";
          version = self.shortRev or "dirty";
          src = ./.;
          # Kept current by scripts/flake-vendor-hash --check (make lint).
          vendorHash = "sha256-Mhr5qYM24tMsA2eqB6ORm7RirHWBT9NgvhOFsTG2aMU=";
          subPackages = [ "cmd/deploy" "cmd/deploy-agent" ];
          env.CGO_ENABLED = 0;
          ldflags = [ "-s" "-w" "-X main.version=${self.shortRev or "dirty"}" ];
          # The test suite needs root, systemd-nspawn and network namespaces;
          # it runs in CI (.ci/run), not in the sandbox.
          doCheck = false;
          meta = {
            description = "Declarative deployment orchestrator";
            mainProgram = "deploy";
          };
        };
        default = deploy;
      });

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ go gopls go-tools openssh systemd debootstrap nix iproute2 nftables ];
        };
      });

      checks = forAll (pkgs: {
        build = self.packages.${pkgs.stdenv.hostPlatform.system}.deploy;
      });
    };
}
