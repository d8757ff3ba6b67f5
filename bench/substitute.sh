#!/usr/bin/env bash
# A cold operator build with and without substitution (BENCHMARKS.md,
# "Substitution"): a fleet of one host with two go packages, deploy's own
# deploy-agent (a big module: the repository, copied into the fleet) and
# the quickstart's hello, and a binary cache in a directory (file://).
#
#   bench/substitute.sh [ROUNDS]      default 2
#
# Each round: CI builds with an empty Go build cache and an empty store and
# pushes (deploy cache push: closures and realisations); then, alternating,
# an operator with an empty Go build cache and an empty store builds the
# same commit with --no-substitute (compiles everything) and without it
# (substitutes from the cache). Prints wall and CPU seconds (deploy and its
# children: the go commands), max RSS and the files the operator's Go
# build cache holds afterwards (0: nothing compiled).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=local
rounds=${1:-2}
work=$(mktemp -d /var/tmp/substitute.XXXXXX)
trap '[ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
go build -o "$work/bin/" ./cmd/deploy ./cmd/deploy-agent
gomodcache=$(go env GOMODCACHE)

mkdir -p "$work/fleet/src" "$work/fleet/hello"
git archive HEAD | tar -x -C "$work/fleet/src"
cp examples/quickstart/hello/main.go examples/quickstart/hello/go.mod "$work/fleet/hello/"
"$work/bin/deploy" cache key generate bench-1 -o "$work/cache.key" >/dev/null 2>&1
pub=$(cat "$work/cache.key.pub")
cat >"$work/fleet/fleet.hcl" <<EOF
cache {
  url         = "file://$work/cache"
  public_keys = ["$pub"]
}
host "h1" {
  address = "10.0.0.1"
  package "agent" {
    go {
      src      = "./src"
      packages = ["./cmd/deploy-agent"]
    }
  }
  package "hello" {
    go { src = "./hello" }
  }
  file "/etc/agent-path" {
    content = package.agent
  }
  file "/etc/hello-path" {
    content = package.hello
  }
}
EOF

# run LABEL ARGS...: one cold run (empty store, empty Go build cache).
run() {
	local label=$1
	shift
	local home=$work/home-$label-$r
	rm -rf "$home" && mkdir -p "$home/gocache"
	env -i PATH="$PATH" HOME="$home" XDG_CACHE_HOME="$home/cache" GOCACHE="$home/gocache" GOMODCACHE="$gomodcache" \
		GOTOOLCHAIN=local DEPLOY_CACHE_KEY="$work/cache.key" \
		/usr/bin/time -f '%e %U %S %M' -o "$home/time" "$work/bin/deploy" "$@" >"$home/out" 2>"$home/err" ||
		{ tail -20 "$home/err" >&2; exit 1; }
	read -r wall usr sys rss <"$home/time"
	local files
	files=$(find "$home/gocache" -type f 2>/dev/null | wc -l)
	printf '%-14s round=%d wall=%7.2fs cpu=%7.2fs rss=%4dMB gocache_files=%d %s\n' "$label" "$r" "$wall" "$(awk -v a="$usr" -v b="$sys" 'BEGIN{print a+b}')" $((rss / 1024)) "$files" "$(tail -1 "$home/out")"
}

echo "substitute: $rounds rounds; $(uptime)"
for r in $(seq "$rounds"); do
	rm -rf "$work/cache"
	run ci "cache" "push" "$work/fleet#h1"
	run no-substitute "build" "--no-substitute" "$work/fleet#h1"
	run substitute "build" "$work/fleet#h1"
done
echo "substitute: done; $(uptime)"
