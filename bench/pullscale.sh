#!/usr/bin/env bash
# Pull mode at scale on tier 2 of the scale harness (vmtest/simhost): N
# simulated hosts running the real deploy-agent (own store and state, own
# mount and network namespace) against a real MinIO behind a counting
# reverse proxy, with the real deploy publishing. Tier 2 is a simulation of
# systemd, not of the agent, the store, the network or S3.
#
#   bench/pullscale.sh [HOSTS...]        (default: 100 300 1000)
#
# Environment: FAIL_AT (default: the largest N) also runs a failing canary
# at that N; IDLE (default 3m) is the idle period measured; INTERVAL
# (default 10s); LOGS, a directory that keeps deploy publish's logs
# (LOGS/N/publish-vK.log). Needs root, unshare, nsenter, ip and the MinIO
# server (DEPLOY_MINIO, or make deps). Results: stdout, and OUT (default
# /var/tmp/pullscale-results)/N.txt and N.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(100 300 1000)
largest=${hosts[-1]}
fail_at=${FAIL_AT:-$largest}
out=${OUT:-/var/tmp/pullscale-results}
mkdir -p "$out"
bin=$(mktemp -d /var/tmp/pullscale-bin-XXXXXX)
trap 'rm -rf "$bin"' EXIT
CGO_ENABLED=0 go build -trimpath -o "$bin/" ./cmd/deploy ./cmd/deploy-agent
go build -o "$bin/pullscale" ./bench/pullscale
for n in "${hosts[@]}"; do
	args=(-hosts "$n" -interval "${INTERVAL:-10s}" -idle "${IDLE:-3m}" -deploy "$bin/deploy" -agent "$bin/deploy-agent" -json "$out/$n.json")
	[ "$n" = "$fail_at" ] && args+=(-fail)
	[ -n "${LOGS:-}" ] && args+=(-logs "$LOGS/$n")
	echo "== $n hosts: pullscale ${args[*]}" >&2
	"$bin/pullscale" "${args[@]}" | tee "$out/$n.txt"
done
