#!/usr/bin/env bash
# NAR dump/restore throughput and store-path hashing, ours next to Nix's
# nix-store and sha256sum on the same 1 GiB tree, in one run.
#   bench/nar.sh [SIZE]     (default 1GiB; needs nix-bin; run from the repo)
# Prints a Markdown table: best of 3 wall-clock runs, warm page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1GiB}
export GOTOOLCHAIN=local
work=$(mktemp -d /var/tmp/deploy-bench.XXXXXX)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
go build -o "$work/deploy" ./cmd/deploy
go run ./bench/gentree -size "$size" "$work/tree"
tree=$work/tree
bytes=$(find "$tree" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
files=$(find "$tree" -type f | wc -l)
"$work/deploy" nar dump "$tree" > "$work/tree.nar"
narsize=$(stat -c %s "$work/tree.nar")
cat "$work/tree.nar" > /dev/null

best() { # best of 3, seconds
	local b=""
	for _ in 1 2 3; do
		eval "${PRE:-true}"
		local s=$(date +%s.%N)
		bash -c "$1" > /dev/null
		local e=$(date +%s.%N)
		local t=$(echo "$e - $s" | bc -l)
		if [ -z "$b" ] || (( $(echo "$t < $b" | bc -l) )); then b=$t; fi
	done
	echo "$b"
}
row() { # name seconds reference-seconds
	printf '| %s | %.3f | %.0f | %s |\n' "$1" "$2" "$(echo "$narsize / $2 / 1048576" | bc -l)" "${3:-}"
}
D=$work/deploy
t_dump=$(best "$D nar dump $tree")
t_nixdump=$(best "nix-store --dump $tree")
t_hash=$(best "$D nar hash $tree")
t_nixhash=$(best "nix-hash --type sha256 --base32 $tree")
t_pipe=$(best "nix-store --dump $tree | sha256sum")
t_sha=$(best "find $tree -type f -print0 | sort -z | xargs -0 cat | sha256sum")
PRE="chmod -R u+w $work/r 2>/dev/null; rm -rf $work/r" t_restore=$(best "$D nar restore $work/r < $work/tree.nar")
PRE="chmod -R u+w $work/r 2>/dev/null; rm -rf $work/r" t_restore_sync=$(best "$D nar restore --sync $work/r < $work/tree.nar")
PRE="chmod -R u+w $work/r 2>/dev/null; rm -rf $work/r" t_nixrestore=$(best "nix-store --restore $work/r < $work/tree.nar")
PRE="chmod -R u+w $work/c 2>/dev/null; rm -rf $work/c" t_add=$(best "$D store add --cache-dir $work/c $tree")

echo "tree: $files files, $bytes bytes of contents, NAR $narsize bytes; $(nproc) cores; $(nix-store --version)"
echo
echo "| operation | seconds (best of 3) | MiB/s of NAR | compared with |"
echo "|---|---:|---:|---|"
row "deploy nar dump > /dev/null" "$t_dump" "$(printf '%.2fx the time of nix-store --dump' "$(echo "$t_dump / $t_nixdump" | bc -l)")"
row "nix-store --dump > /dev/null" "$t_nixdump"
row "deploy nar hash (NAR SHA-256)" "$t_hash" "$(printf '%.2fx the time of nix-hash' "$(echo "$t_hash / $t_nixhash" | bc -l)")"
row "nix-hash --type sha256" "$t_nixhash"
row "nix-store --dump \| sha256sum" "$t_pipe"
row "cat every file \| sha256sum (floor)" "$t_sha"
row "deploy nar restore" "$t_restore" "$(printf '%.2fx the time of nix-store --restore' "$(echo "$t_restore / $t_nixrestore" | bc -l)")"
row "deploy nar restore --sync (fsync all)" "$t_restore_sync"
row "nix-store --restore" "$t_nixrestore"
row "deploy store add (hash, restore, fsync, register)" "$t_add"
