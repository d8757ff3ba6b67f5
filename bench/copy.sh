#!/usr/bin/env bash
# Closure copy vs raw ssh, rsync and nix copy, side by side in one run, over
# the same link to the same sshd (root; needs openssh-server, rsync, nix-bin,
# nftables, iproute2, util-linux, e2fsprogs, bc).
#
#   bench/copy.sh [SIZE] [disk|tmpfs] [RATE]      (default 512MiB disk)
#
# TREE=DIR copies DIR instead of a generated tree of SIZE (random, so
# incompressible); ZSTD=1 adds `deploy copy --compress` and `ssh -C` rows.
#
# The target is a real OpenSSH sshd in its own network namespace, reached
# over a veth pair. RATE (a tc rate such as 1gbit or 200mbit) shapes the
# operator-to-target direction with a tbf qdisc: a link-bound copy, where the
# protocol's own overhead shows. Without RATE the link is unshaped and every
# tool is bound by the 2 CPUs and the target's file system.
# With "disk" the targets are on a fresh ext4 file system made for the run
# (a loop device over a file in /var/tmp); with "tmpfs" every target is on
# /dev/shm, which takes the disk out.
#
# ONLY="ours rawfile" (names as in "Every run") times only those and skips
# the no-op part: for quick A/B runs while changing the code.
# Each tool is timed RUNS times (default 3), round-robin so that drift of
# the machine hits all of them alike, each time into a fresh directory that
# nothing was deleted from (ext4 skips inodes freed in the last 30 s, so
# creating thousands of files right after an rm -rf is several times
# slower; that would measure the benchmark, not the tool), after a sync.
# Prints Markdown tables: the throughput comparison (best of RUNS), the
# agent's one-time bootstrap, and the no-op / incremental measurements.
# Bytes on the wire are counted by an nft counter on the sshd port.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-512MiB}
on=${2:-disk}
rate=${3:-}
runs=${RUNS:-3}
export GOTOOLCHAIN=local
w=$(mktemp -d /var/tmp/deploy-copybench.XXXXXX)
port=$((20000 + RANDOM % 20000))
ns=dcopybench$$
hif=dcb$$h
nif=dcb$$n
cleanup() {
	[ -f "$w/sshd.pid" ] && kill "$(cat "$w/sshd.pid")" 2>/dev/null || true
	nft delete table inet deploybench$$ 2>/dev/null || true
	ip link del "$hif" 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	if [ -n "${loopdev:-}" ]; then umount "$w/mnt" 2>/dev/null; losetup -d "$loopdev"; tb=$w; fi
	chmod -R u+w "$w" "${tb:-$w}" 2>/dev/null; rm -rf "$w" "${tb:-$w}"
}
trap cleanup EXIT
mkdir -p "$w/bin"
CGO_ENABLED=0 go build -trimpath -o "$w/bin/" ./cmd/deploy ./cmd/deploy-agent
if [ -n "${TREE:-}" ]; then
	cp -a "$TREE" "$w/tree"
	size="the tree $TREE"
else
	go run ./bench/gentree -size "$size" "$w/tree" >/dev/null
fi
D=$w/bin/deploy

"$D" nar dump "$w/tree" > "$w/tree.nar"
narsize=$(stat -c %s "$w/tree.nar")
if [ "$on" = tmpfs ]; then
	tb=$(mktemp -d /dev/shm/deploy-copybench.XXXXXX)
else
	# A fresh ext4 on a loop device (direct I/O onto a file in /var/tmp, so
	# no second page cache), with its inode tables initialised up front:
	# no lazy init writing in the background, no recently freed inodes.
	truncate -s $(( (narsize * (runs * 7 + 4) * 13 / 10 >> 20) + 1024 ))M "$w/fs.img"
	loopdev=$(losetup --direct-io=on -f --show "$w/fs.img")
	mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev"
	# Mounted before sshd starts: "ip netns exec" gives sshd its own mount
	# namespace, which sees only what was mounted before.
	mkdir "$w/mnt"
	mount "$loopdev" "$w/mnt"
	tb=$w/mnt
fi
# The target's network: a namespace behind a veth pair, shaped if asked.
ip netns add "$ns"
ip link add "$hif" type veth peer name "$nif"
ip link set "$nif" netns "$ns"
ip addr add 10.231.0.1/30 dev "$hif"
ip link set "$hif" up
ip -n "$ns" addr add 10.231.0.2/30 dev "$nif"
ip -n "$ns" link set "$nif" up
ip -n "$ns" link set lo up
link="veth, unshaped"
if [ -n "$rate" ]; then
	tc qdisc add dev "$hif" root tbf rate "$rate" burst 256kb latency 20ms
	link="veth shaped to $rate (tbf)"
fi
H=10.231.0.2

# sshd in the namespace, root login with a fresh key.
ssh-keygen -q -t ed25519 -N '' -f "$w/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$w/id"
cp "$w/id.pub" "$w/authorized_keys"
cat > "$w/sshd_config" <<CFG
Port $port
ListenAddress $H
HostKey $w/hostkey
AuthorizedKeysFile $w/authorized_keys
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $w/sshd.pid
Subsystem sftp internal-sftp
CFG
mkdir -p /run/sshd
ip netns exec "$ns" /usr/sbin/sshd -f "$w/sshd_config" -E "$w/sshd.log"
for _ in $(seq 50); do [ -f "$w/sshd.pid" ] && break; sleep 0.1; done
echo "[$H]:$port $(cut -d' ' -f1,2 "$w/hostkey.pub")" > "$w/known_hosts"
SSHOPTS="-p $port -i $w/id -o UserKnownHostsFile=$w/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
hostkey=$(cut -d' ' -f1,2 "$w/hostkey.pub")

nft add table inet deploybench$$
nft add chain inet deploybench$$ out '{ type filter hook output priority 0; }'
nft add rule inet deploybench$$ out tcp dport "$port" counter
# Rule counters cannot be reset by 'nft reset counters' (named counters only):
# measure the difference from a baseline.
counter() { nft list chain inet deploybench$$ out | sed -n 's/.*counter packets [0-9]* bytes \([0-9]*\).*/\1/p'; }
wire_base=0
reset_wire() { wire_base=$(counter); }
wire() { echo $(( $(counter) - wire_base )); }

# Nix's source store holds the same tree.
NIXSRC=$w/nixsrc
nixpath=$(NIX_REMOTE= nix-store --store "$NIXSRC" --add "$w/tree")
mkdir -p "$w/tiny"; echo tiny > "$w/tiny/f"

# ours_target I: a fresh target with the agent already installed (by copying
# a tiny path), and the tree in the local store under that target's store
# directory (a store path names its store directory). Prints the tree's path.
ours_target() {
	local T=$tb/ours$1
	local p
	p=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$w/tree")
	local tiny
	tiny=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$w/tiny")
	"$D" copy --cache-dir "$w/cache" --store-dir "$T/store" --remote-state-dir "$T" --to "root@$H:$port" \
		--host-key "$hostkey" --identity "$w/id" --ssh-config none "$tiny" >/dev/null 2>>"$w/errors"
	echo "$p"
}
ours_cmd() { # ours_cmd I PATH
	local T=$tb/ours$1
	echo "$D copy --cache-dir $w/cache --store-dir $T/store --remote-state-dir $T --to root@$H:$port --host-key '$hostkey' --identity $w/id --ssh-config none $2"
}

now() { date +%s.%N; }
declare -A best wirebest
timeit() { # timeit NAME COMMAND: one timed run after a sync; keeps the best
	if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $1 "* ]]; then best[$1]=1; wirebest[$1]=0; return; fi
	sync; sleep 0.5
	reset_wire
	local s e t
	s=$(now)
	bash -c "$2" >/dev/null 2>>"$w/errors" || { echo "failed: $2" >&2; cat "$w/errors" >&2; exit 1; }
	e=$(now)
	t=$(echo "$e - $s" | bc -l)
	echo "$1 $t" >> "$w/times"
	if [ -z "${best[$1]:-}" ] || (( $(echo "$t < ${best[$1]}" | bc -l) )); then best[$1]=$t; wirebest[$1]=$(wire); fi
}
for i in $(seq "$runs"); do
	P=$(ours_target "$i")
	timeit raw "ssh $SSHOPTS root@$H 'cat > /dev/null' < $w/tree.nar"
	mkdir -p "$tb/rawfile$i"
	timeit rawfile "ssh $SSHOPTS root@$H 'cat > $tb/rawfile$i/tree.nar && sync $tb/rawfile$i/tree.nar' < $w/tree.nar"
	mkdir -p "$tb/local$i"
	timeit local "cat $w/tree.nar > $tb/local$i/tree.nar && sync $tb/local$i/tree.nar"
	timeit ours "$(ours_cmd "$i" "$P")"
	if [ -n "${ZSTD:-}" ]; then
		Pz=$(ours_target "z$i")
		timeit oursz "$(ours_cmd "z$i" "$Pz") --compress"
		timeit rawz "ssh -C $SSHOPTS root@$H 'cat > /dev/null' < $w/tree.nar"
	fi
	timeit rsync "rsync -a -e 'ssh $SSHOPTS' $w/tree/ root@$H:$tb/rsync$i/"
	timeit nix "NIX_SSHOPTS='$SSHOPTS' nix --extra-experimental-features nix-command copy --no-check-sigs --from 'local?root=$NIXSRC' --to 'ssh://root@$H?remote-store=local%3Froot%3D$tb/nix$i' $nixpath"
done
# The agent's one-time bootstrap: the first copy of a tiny path to a host
# that has no agent (SFTP upload of the agent, install-self, then the copy).
for i in $(seq "$runs"); do
	T=$tb/boot$i
	tiny=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$w/tiny")
	timeit bootstrap "$D copy --cache-dir $w/cache --store-dir $T/store --remote-state-dir $T --to root@$H:$port --host-key '$hostkey' --identity $w/id --ssh-config none $tiny"
done

rate_of() { echo "$narsize / $1 / 1048576" | bc -l; }
share() { echo "100 * $1 / ${best[ours]}" | bc -l; }
echo "tree: ${TREE:-generated, $size}; targets on $on ($(df --output=fstype "$tb" | tail -1)${loopdev:+, fresh, on $loopdev with direct I/O}), link: $link; tree: $(find "$w/tree" -type f | wc -l) files, NAR $narsize bytes; best of $runs; sshd $(/usr/sbin/sshd -V 2>&1 | head -1); $(nix --version)"
echo
echo "| copy of the same tree to a fresh target | seconds | MiB/s | ours against it | bytes on the wire |"
echo "|---|---:|---:|---:|---:|"
printf '| raw `ssh host '"'"'cat > /dev/null'"'"'` of the NAR | %.3f | %.0f | ours: %.0f%% of its throughput | %s |\n' "${best[raw]}" "$(rate_of "${best[raw]}")" "$(share "${best[raw]}")" "${wirebest[raw]}"
printf '| raw `ssh host '"'"'cat > F && sync F'"'"'` of the NAR | %.3f | %.0f | ours: %.0f%% of its throughput | %s |\n' "${best[rawfile]}" "$(rate_of "${best[rawfile]}")" "$(share "${best[rawfile]}")" "${wirebest[rawfile]}"
printf '| no network: `cat NAR > F && sync F` on the target'"'"'s file system | %.3f | %.0f | ours: %.0f%% of its throughput | — |\n' "${best[local]}" "$(rate_of "${best[local]}")" "$(share "${best[local]}")"
printf '| `deploy copy` (agent present: stream, hash, verify, syncfs, register) | %.3f | %.0f | — | %s |\n' "${best[ours]}" "$(rate_of "${best[ours]}")" "${wirebest[ours]}"
if [ -n "${ZSTD:-}" ]; then
	printf '| raw `ssh -C host '"'"'cat > /dev/null'"'"'` (zlib) of the NAR | %.3f | %.0f | ours with zstd: %.0f%% of its throughput | %s |\n' "${best[rawz]}" "$(rate_of "${best[rawz]}")" "$(echo "100 * ${best[rawz]} / ${best[oursz]}" | bc -l)" "${wirebest[rawz]}"
	printf '| `deploy copy --compress` (zstd; agent present) | %.3f | %.0f | ours with zstd: %.0f%% of raw ssh'"'"'s throughput | %s |\n' "${best[oursz]}" "$(rate_of "${best[oursz]}")" "$(echo "100 * ${best[raw]} / ${best[oursz]}" | bc -l)" "${wirebest[oursz]}"
fi
printf '| `rsync -a` over ssh | %.3f | %.0f | ours: %.2fx faster | %s |\n' "${best[rsync]}" "$(rate_of "${best[rsync]}")" "$(echo "${best[rsync]} / ${best[ours]}" | bc -l)" "${wirebest[rsync]}"
printf '| `nix copy --to ssh://` | %.3f | %.0f | ours: %.2fx faster | %s |\n' "${best[nix]}" "$(rate_of "${best[nix]}")" "$(echo "${best[nix]} / ${best[ours]}" | bc -l)" "${wirebest[nix]}"
echo
echo "Every run, in seconds: $(sort -k1,1 -s "$w/times" | awk '{a[$1]=a[$1] " " sprintf("%.2f", $2)} END {for (k in a) printf "%s:%s; ", k, a[k]}')"

# No-op copy of a 2,000-path closure, and a one-file change.
[ -z "${ONLY:-}" ] || exit 0
T=$tb/many
STORE=$T/store
mkdir -p "$w/many"
for i in $(seq 1 1999); do
	mkdir -p "$w/many/p$i"; echo "path $i" > "$w/many/p$i/f"
done
for i in $(seq 1 1999); do "$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/many/p$i"; done > "$w/many.paths"
refargs=$(sed 's/^/--ref /' "$w/many.paths" | tr '\n' ' ')
mkdir -p "$w/rootdir"; echo root > "$w/rootdir/f"
R=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" --name root $refargs "$w/rootdir")
COPY="$D copy --cache-dir $w/cache --store-dir $STORE --remote-state-dir $T --to root@$H:$port --host-key '$hostkey' --identity $w/id --ssh-config none"
# The first copy (agent bootstrap included): 2,000 small paths, where the
# per-path cost of durability shows.
timeit first "$COPY $R"
for _ in $(seq "$runs"); do timeit noop "$COPY $R"; done
# One file changes in one 1 KiB path: only that path and the root are sent.
echo "path 1 changed" > "$w/many/p1/f"
P1=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/many/p1")
refargs2=$(sed 1d "$w/many.paths" | sed 's/^/--ref /' | tr '\n' ' ')
echo root2 > "$w/rootdir/f"
R2=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" --name root $refargs2 --ref "$P1" "$w/rootdir")
reset_wire
bash -c "$COPY --json $R2" > "$w/inc.json" 2>/dev/null
w_inc=$(wire)
inc_nar=$(grep '"event":"host.phase".*"phase":"copy".*"state":"done"' "$w/inc.json" | sed 's/.*"total":\([0-9]*\).*/\1/')
reset_wire
bash -c "$COPY $R2" >/dev/null 2>&1
w_noop2=$(wire)
echo
echo "| measurement | result |"
echo "|---|---|"
printf '| the agent'"'"'s bootstrap: first copy of a tiny path to a host without the agent | %.3f s, %s bytes on the wire |\n' "${best[bootstrap]}" "${wirebest[bootstrap]}"
printf '| first copy of a 2,000-path closure (1 KiB paths; agent bootstrap included) | %.3f s, %s bytes on the wire |\n' "${best[first]}" "${wirebest[first]}"
printf '| no-op copy of a 2,000-path closure (all present) | %.3f s, %s bytes on the wire |\n' "${best[noop]}" "${wirebest[noop]}"
printf '| one-file change in that closure (1 path + the root re-sent) | %s NAR bytes, %s bytes on the wire |\n' "$inc_nar" "$w_inc"
printf '| the same no-op, measured again | %s bytes on the wire (handshake + want list + reply) |\n' "$w_noop2"
