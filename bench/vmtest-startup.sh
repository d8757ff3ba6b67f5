#!/usr/bin/env bash
# Measures vmtest host start-up: the time Start takes to boot 1, 5 and 10
# hosts (warm image cache) and, per booted idle host, the PSS of its
# processes and the size of its writable layer.
# Needs root (see vmtest's package doc). Extra arguments go to `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Warm the image cache first, so that no measurement includes debootstrap.
GOTOOLCHAIN=local go test ./vmtest/ -run '^TestHosts$' -count=1 >/dev/null
exec env GOTOOLCHAIN=local go test ./vmtest/ -run '^$' -bench '^BenchmarkStart$' -benchtime=5x -count=1 "$@"
