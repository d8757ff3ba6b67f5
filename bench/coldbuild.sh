#!/usr/bin/env bash
# Cold build of a generated fleet (BENCHMARKS.md, "Scale"): N hosts of one
# role (bench/scalefleet: a Go package, a per-host file, a service, an http
# check), built by `deploy build --json` into an empty store. With
# COLD_GO=1 the Go build cache is empty too (what a CI runner without a
# cache pays); by default it is warm, so that the number is the builder's.
#
#   bench/coldbuild.sh [HOSTS...]        default: 100 300 1000
#
# Prints per run: wall and CPU time, max RSS, the --json events (count and
# bytes). Run it on a quiet machine: the store flushes to disk.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
work=$(mktemp -d /var/tmp/coldbuild.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/bin/deploy" ./cmd/deploy
go build -o "$work/bin/deploy-agent" ./cmd/deploy-agent
gocache=$(go env GOCACHE)
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(100 300 1000)
printf '%-6s %-8s %-8s %-8s %-8s %-8s %-10s %s\n' hosts wall_s user_s sys_s rss_MiB events json_MiB load
for n in "${hosts[@]}"; do
	go run ./bench/scalefleet -hosts "$n" -out "$work/fleet$n" >/dev/null
	# Warm the Go package once, outside the measurement (unless COLD_GO).
	if [ -z "${COLD_GO:-}" ]; then
		"$work/bin/deploy" build --cache-dir "$work/warm" "$work/fleet$n#h0001" >/dev/null 2>&1
	else
		gocache="$work/gocache$n"
	fi
	rm -rf "$work/cache"
	load=$(cut -d' ' -f1 /proc/loadavg)
	GOCACHE=$gocache /usr/bin/time -f '%e %U %S %M' -o "$work/time" \
		"$work/bin/deploy" build --json --cache-dir "$work/cache" "$work/fleet$n#all" >"$work/events" 2>"$work/stderr" ||
		{ cat "$work/stderr"; exit 1; }
	read -r wall user sys rss <"$work/time"
	printf '%-6s %-8s %-8s %-8s %-8s %-8s %-10s %s\n' "$n" "$wall" "$user" "$sys" "$((rss / 1024))" \
		"$(wc -l <"$work/events")" "$(awk -v b="$(wc -c <"$work/events")" 'BEGIN{printf "%.2f", b/1048576}')" "$load"
done
