#!/usr/bin/env bash
# Push deploys to simulated hosts (tier 2 of the scale harness,
# vmtest/simhost: a simulation of systemd, not of the agent, the store, the
# network or SSH): for each N, N hosts with the real OpenSSH server in their
# own namespaces; the first deploy and NOOPS no-op redeploys of the real
# deploy, then deploy status, status --drift, verify and gc, each timed,
# with deploy's CPU and memory and the CPU of the whole experiment.
#
#   bench/pushsim.sh [HOSTS...]        (default: 1 10 100)
#
# Environment: NOOPS (default 3), DEPLOY_FLAGS (more flags for each deploy
# run). Needs root, unshare, nsenter, ip and sshd (make deps).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(1 10 100)
bin=$(mktemp -d /var/tmp/pushsim-bin-XXXXXX)
trap 'rm -rf "$bin"' EXIT
CGO_ENABLED=0 go build -trimpath -o "$bin/" ./cmd/deploy ./cmd/deploy-agent
go build -o "$bin/pushsim" ./bench/pushsim
for n in "${hosts[@]}"; do
	"$bin/pushsim" -hosts "$n" -noops "${NOOPS:-3}" -deploy "$bin/deploy" -flags "${DEPLOY_FLAGS:-}"
done
