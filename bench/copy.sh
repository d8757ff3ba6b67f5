#!/usr/bin/env bash
# Closure copy vs raw ssh, rsync (with and without --fsync) and nix copy,
# side by side in one run, over the same link to the same sshd (root; needs
# openssh-client, rsync, nix-bin, nftables, iproute2, util-linux,
# e2fsprogs, bc, and for the default target what vmtest needs).
#
#   bench/copy.sh [WORKLOADS] [vmtest|disk|tmpfs] [RATE]
#
# WORKLOADS (default "large small go") is a space-separated list of
#   large       one random file of 200 MiB
#   small       2,000 random files of 1 to 64 KiB in 40 directories (66 MiB)
#   go          the Go toolchain (/usr/local/go: about 15,000 files, 270 MB)
#   mixed:SIZE  bench/gentree's mix of small, medium and large files
#   DIR         any directory
#
# Targets:
#   vmtest  (default) a vmtest host: a booted Debian with systemd and its own
#           sshd, reached over the test switch; every tool writes into a
#           fresh directory on the host's root file system, an overlayfs
#           whose upper layer is on this machine's root file system, as a
#           container host's store is. The least favourable realistic set-up.
#   disk    an sshd in its own network namespace writing onto a fresh ext4
#           made for the run (a loop device with direct I/O over a file in
#           /var/tmp, inode tables initialised up front).
#   tmpfs   the same sshd writing into /dev/shm: the disk taken out.
# RATE (a tc rate such as 1gbit) shapes the operator-to-target direction
# with a tbf qdisc (disk and tmpfs only): a link-bound copy.
#
# Each tool is timed RUNS times (default 3), round-robin so that drift of
# the machine hits all of them alike, each time into a fresh directory that
# nothing was deleted from (ext4 skips inodes freed in the last 30 s, so
# creating thousands of files right after an rm -rf is several times
# slower; that would measure the benchmark, not the tool), after a sync.
# Nothing is deleted until the end, so the target needs room for about
# 7 x RUNS copies of the workloads.
# BUSY=1 adds rows timed while another process on the target writes 1 GiB
# to the same file system (a busy neighbour: a copy that flushes the whole
# file system waits for the neighbour's data too).
# ONLY="ours rsync" (names as in "Every run") times only those and skips
# the bootstrap and no-op part: for quick A/B runs while changing the code.
# Prints Markdown tables: per workload the comparison (median of RUNS, and
# the spread), then the agent's bootstrap and the no-op / incremental copy.
# Bytes on the wire are counted by an nft counter on the ssh port.
set -euo pipefail
cd "$(dirname "$0")/.."
workloads=${1:-large small go}
on=${2:-vmtest}
rate=${3:-}
runs=${RUNS:-3}
export GOTOOLCHAIN=local
w=$(mktemp -d /var/tmp/deploy-copybench.XXXXXX)
port=$((20000 + RANDOM % 20000))
ns=dcopybench$$
hif=dcb$$h
nif=dcb$$n
NS=() # the command prefix that reaches the target's network
cleanup() {
	[ -n "${vmpid:-}" ] && { kill "$vmpid" 2>/dev/null; wait "$vmpid" 2>/dev/null || true; }
	[ -f "$w/sshd.pid" ] && kill "$(cat "$w/sshd.pid")" 2>/dev/null || true
	"${NS[@]}" nft delete table inet deploybench$$ 2>/dev/null || true
	ip link del "$hif" 2>/dev/null || true
	ip netns del "$ns" 2>/dev/null || true
	if [ -n "${loopdev:-}" ]; then umount "$w/mnt" 2>/dev/null; losetup -d "$loopdev"; fi
	[ "$on" = tmpfs ] && [ -n "${tb:-}" ] && { chmod -R u+w "$tb" 2>/dev/null; rm -rf "$tb"; }
	chmod -R u+w "$w" 2>/dev/null; rm -rf "$w"
}
trap cleanup EXIT
mkdir -p "$w/bin"
CGO_ENABLED=0 go build -trimpath -o "$w/bin/" ./cmd/deploy ./cmd/deploy-agent ./bench/vmhost
D=$w/bin/deploy

# The trees, and their NARs.
i=0
declare -a wl_name wl_dir
for spec in $workloads; do
	i=$((i + 1))
	d=$w/tree$i
	case $spec in
	large) go run ./bench/gentree -shape large -size 200MiB "$d" >/dev/null; name="one file of 200 MiB" ;;
	small) go run ./bench/gentree -shape small "$d" >/dev/null; name="2,000 files of 1-64 KiB" ;;
	go) cp -a "$(go env GOROOT)" "$d"; name="the Go toolchain ($(go env GOVERSION))" ;;
	mixed:*) go run ./bench/gentree -size "${spec#mixed:}" "$d" >/dev/null; name="gentree's mix, ${spec#mixed:}" ;;
	*) cp -a "$spec" "$d"; name="$spec" ;;
	esac
	"$D" nar dump "$d" > "$d.nar"
	wl_name[$i]="$name, $(find "$d" -type f | wc -l) files, NAR $(stat -c %s "$d.nar") bytes"
	wl_dir[$i]=$d
done
nwl=$i

if [ "$on" = vmtest ]; then
	mkdir "$w/vm"
	coproc VM { exec "$w/bin/vmhost" -n 1 -out "$w/vm" 2>>"$w/vmhost.log"; }
	vmpid=$VM_PID
	read -r ready <&"${VM[0]}" || { cat "$w/vmhost.log" >&2; exit 1; }
	[ "$ready" = ready ] || { cat "$w/vmhost.log" >&2; exit 1; }
	# shellcheck disable=SC1091
	. "$w/vm/env"
	H=$HOSTS
	port=22
	NS=(nsenter "--net=$NETNS")
	ID=$w/vm/id
	SSHOPTS="-p $port -i $ID -o UserKnownHostsFile=$w/vm/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
	hostkey=$(cut -d' ' -f2,3 "$w/vm/known_hosts")
	tb=/var/tmp/copybench
	target() { "${NS[@]}" ssh $SSHOPTS "root@$H" "$1"; }
	link="the vmtest switch (veth + bridge, unshaped)"
	fsdesc="a vmtest host's root file system (overlayfs, upper layer on this machine's $(df --output=fstype /var/cache | tail -1))"
else
	if [ "$on" = tmpfs ]; then
		tb=$(mktemp -d /dev/shm/deploy-copybench.XXXXXX)
		fsdesc="tmpfs"
	else
		total=0
		for j in $(seq "$nwl"); do total=$((total + $(stat -c %s "${wl_dir[$j]}.nar"))); done
		truncate -s $(( (total * (runs * 9 + 4) * 13 / 10 >> 20) + 1024 ))M "$w/fs.img"
		loopdev=$(losetup --direct-io=on -f --show "$w/fs.img")
		mkfs.ext4 -q -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev"
		# Mounted before sshd starts: "ip netns exec" gives sshd its own
		# mount namespace, which sees only what was mounted before.
		mkdir "$w/mnt"
		mount "$loopdev" "$w/mnt"
		tb=$w/mnt
		fsdesc="a fresh ext4 on $loopdev (direct I/O)"
	fi
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
	ID=$w/id
	SSHOPTS="-p $port -i $ID -o UserKnownHostsFile=$w/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
	hostkey=$(cut -d' ' -f1,2 "$w/hostkey.pub")
	target() { bash -c "$1"; }
fi
target "mkdir -p $tb"
SSH="${NS[*]} ssh $SSHOPTS"

"${NS[@]}" nft add table inet deploybench$$
"${NS[@]}" nft add chain inet deploybench$$ out '{ type filter hook output priority 0; }'
"${NS[@]}" nft add rule inet deploybench$$ out tcp dport "$port" counter
# Rule counters cannot be reset by 'nft reset counters' (named counters only):
# measure the difference from a baseline.
counter() { "${NS[@]}" nft list chain inet deploybench$$ out | sed -n 's/.*counter packets [0-9]* bytes \([0-9]*\).*/\1/p'; }
wire_base=0
reset_wire() { wire_base=$(counter); }
wire() { echo $(( $(counter) - wire_base )); }

mkdir -p "$w/tiny"; echo tiny > "$w/tiny/f"
COPYARGS="--to root@$H:$port --host-key '$hostkey' --identity $ID --ssh-config none"
# ours_target DIR TREE: a fresh target with the agent already installed (by
# copying a tiny path), and TREE in the local store under that target's
# store directory (a store path names its store directory). Prints TREE's
# store path.
ours_target() {
	local T=$tb/$1 p tiny
	p=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$2")
	tiny=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$w/tiny")
	bash -c "${NS[*]} $D copy --cache-dir $w/cache --store-dir $T/store --remote-state-dir $T $COPYARGS $tiny" >/dev/null 2>>"$w/errors"
	echo "$p"
}
ours_cmd() { # ours_cmd DIR PATH
	local T=$tb/$1
	echo "${NS[*]} $D copy --cache-dir $w/cache --store-dir $T/store --remote-state-dir $T $COPYARGS $2"
}

now() { date +%s.%N; }
declare -A times wires
timeit() { # timeit NAME COMMAND: one timed run after a sync
	if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${1%_busy} "* ]]; then return; fi
	sync; sleep 0.5
	local busy=
	if [[ $1 == *_busy ]]; then
		# The neighbour: 1 GiB written (not synced) into the same file system
		# while the copy runs; the copy starts once 256 MiB are dirty.
		target "rm -f $tb/busy; sync; (dd if=/dev/zero of=$tb/busy bs=1M count=1024 status=none &) ; while [ \$(stat -c %s $tb/busy 2>/dev/null || echo 0) -lt 268435456 ]; do sleep 0.05; done"
		busy=1
	fi
	reset_wire
	local s e t
	s=$(now)
	bash -c "$2" >/dev/null 2>>"$w/errors" || { echo "failed: $2" >&2; cat "$w/errors" >&2; exit 1; }
	e=$(now)
	t=$(echo "$e - $s" | bc -l)
	[ -n "$busy" ] && target "while pgrep -x dd >/dev/null; do sleep 0.1; done; rm -f $tb/busy; sync"
	echo "$wl $1 $t" >> "$w/times"
	times[$wl.$1]="${times[$wl.$1]:-} $t"
	wires[$wl.$1]=$(wire)
}
# stat_of W NAME: "median min max" of the runs
stat_of() { tr ' ' '\n' <<<"${times[$1.$2]:-}" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "- - -"; exit} m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR]}'; }
median() { stat_of "$1" "$2" | cut -d' ' -f1; }

haverow() { [ -n "${times[$1.$2]:-}" ]; }
for wl in $(seq "$nwl"); do
	tree=${wl_dir[$wl]}
	if [ "$on" != vmtest ]; then
		nixsrc=$w/nixsrc$wl
		nixpath=$(NIX_REMOTE= nix-store --store "$nixsrc" --add "$tree")
	fi
	# The no-network rows read the NAR, or a tarball of the tree, from the
	# target's page cache.
	bash -c "$SSH root@$H 'cat > $tb/nar$wl'" < "$tree.nar"
	tar -C "$tree" -cf - . | bash -c "$SSH root@$H 'cat > $tb/tar$wl'"
	for i in $(seq "$runs"); do
		P=$(ours_target "ours$wl-$i" "$tree")
		timeit raw "$SSH root@$H 'cat > /dev/null' < $tree.nar"
		target "mkdir -p $tb/rawfile$wl-$i $tb/local$wl-$i"
		timeit rawfile "$SSH root@$H 'cat > $tb/rawfile$wl-$i/tree.nar && sync $tb/rawfile$wl-$i/tree.nar' < $tree.nar"
		timeit local "$SSH root@$H 'cat $tb/nar$wl > $tb/local$wl-$i/tree.nar && sync $tb/local$wl-$i/tree.nar'"
		timeit localtree "$SSH root@$H 'mkdir $tb/localtree$wl-$i && tar -xf $tb/tar$wl -C $tb/localtree$wl-$i && sync -f $tb/localtree$wl-$i'"
		timeit ours "$(ours_cmd "ours$wl-$i" "$P")"
		if [ -n "${ZSTD:-}" ]; then
			Pz=$(ours_target "oursz$wl-$i" "$tree")
			timeit oursz "$(ours_cmd "oursz$wl-$i" "$Pz") --compress"
		fi
		timeit rsync "rsync -a -e '$SSH' $tree/ root@$H:$tb/rsync$wl-$i/"
		timeit rsyncfsync "rsync -a --fsync -e '$SSH' $tree/ root@$H:$tb/rsyncf$wl-$i/"
		if [ -n "${BUSY:-}" ]; then
			Pb=$(ours_target "oursb$wl-$i" "$tree")
			timeit ours_busy "$(ours_cmd "oursb$wl-$i" "$Pb")"
			timeit rsyncfsync_busy "rsync -a --fsync -e '$SSH' $tree/ root@$H:$tb/rsyncfb$wl-$i/"
		fi
		if [ "$on" != vmtest ]; then
			timeit nix "NIX_SSHOPTS='$SSHOPTS' nix --extra-experimental-features nix-command copy --no-check-sigs --from 'local?root=$nixsrc' --to 'ssh://root@$H?remote-store=local%3Froot%3D$tb/nix$wl-$i' $nixpath"
		fi
	done
	narsize=$(stat -c %s "$tree.nar")
	m_ours=$(median "$wl" ours)
	row() { # row NAME DESCRIPTION: a comparison row against ours
		haverow "$wl" "$1" || return 0
		local m lo hi
		read -r m lo hi <<<"$(stat_of "$wl" "$1")"
		printf '| %s | %.3f (%.3f-%.3f) | %.0f | %.2f | %s |\n' "$2" "$m" "$lo" "$hi" "$(echo "$narsize / $m / 1048576" | bc -l)" "$(echo "$m / $m_ours" | bc -l)" "${wires[$wl.$1]}"
	}
	echo "### ${wl_name[$wl]}"
	echo
	echo "Target: $fsdesc; link: $link; median of $runs (min-max); ratio = its time / \`deploy copy\`'s (above 1: ours is faster)."
	echo
	echo "| copy of the same tree to a fresh directory | seconds | MiB/s | ratio | bytes on the wire |"
	echo "|---|---:|---:|---:|---:|"
	row ours '`deploy copy` (agent present: stream, hash, verify, durable, register)'
	row raw 'raw `ssh host '"'"'cat > /dev/null'"'"'` of the NAR'
	row rawfile 'raw `ssh host '"'"'cat > F && sync F'"'"'` of the NAR (stored durably)'
	row local 'no network: `cat NAR > F && sync F` on the target'
	row localtree 'no network: `tar -x` of the tree on the target, then `sync -f` (syncfs)'
	row rsync '`rsync -a` over ssh'
	row rsyncfsync '`rsync -a --fsync` over ssh'
	row oursz '`deploy copy --compress` (zstd)'
	row nix '`nix copy --to ssh://`'
	if haverow "$wl" ours_busy; then
		m_ours=$(median "$wl" ours_busy)
		row ours_busy '`deploy copy`, while a neighbour writes 1 GiB to the same file system'
		row rsyncfsync_busy '`rsync -a --fsync`, while a neighbour writes 1 GiB'
	fi
	echo
done
echo "Every run, in seconds (workload, tool: times): $(sort -k1,2 -s "$w/times" | awk '{k=$1 " " $2; a[k]=a[k] " " sprintf("%.2f", $3)} END {for (k in a) printf "%s:%s; ", k, a[k]}')"
echo "sshd: $(target '/usr/sbin/sshd -V 2>&1 | head -1' 2>&1 || true); rsync $(rsync --version | head -1 | awk '{print $3}')"

# The agent's bootstrap, and a no-op / incremental copy of 2,000 paths.
[ -z "${ONLY:-}" ] || exit 0
wl=meta
for i in $(seq "$runs"); do
	T=$tb/boot$i
	tiny=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$w/tiny")
	timeit bootstrap "$(ours_cmd "boot$i" "$tiny")"
done
# An agent upgrade: the host runs an older agent (here: the same program
# with other bytes appended, so another store path), and the new one comes
# through the old one's receive.
cp "$w/bin/deploy-agent" "$w/old-agent"; echo older >> "$w/old-agent"
for i in $(seq "$runs"); do
	T=$tb/upgrade$i
	tiny=$("$D" store add --cache-dir "$w/cache" --store-dir "$T/store" "$w/tiny")
	bash -c "$(ours_cmd "upgrade$i" "$tiny") --agent $w/old-agent" >/dev/null 2>>"$w/errors"
	timeit upgrade "$(ours_cmd "upgrade$i" "$tiny")"
done
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
COPY="${NS[*]} $D copy --cache-dir $w/cache --store-dir $STORE --remote-state-dir $T $COPYARGS"
timeit first "$COPY $R"
for _ in $(seq "$runs"); do timeit noop "$COPY $R"; done
echo "path 1 changed" > "$w/many/p1/f"
P1=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/many/p1")
refargs2=$(sed 1d "$w/many.paths" | sed 's/^/--ref /' | tr '\n' ' ')
echo root2 > "$w/rootdir/f"
R2=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" --name root $refargs2 --ref "$P1" "$w/rootdir")
reset_wire
bash -c "$COPY --json $R2" > "$w/inc.json" 2>/dev/null
w_inc=$(wire)
inc_nar=$(grep '"event":"host.phase".*"phase":"copy".*"state":"done"' "$w/inc.json" | sed 's/.*"total":\([0-9]*\).*/\1/')
echo
echo "| measurement | result (median of $runs) |"
echo "|---|---|"
printf '| the agent'"'"'s bootstrap: first copy of a tiny path to a host without the agent | %.3f s, %s bytes on the wire |\n' "$(median meta bootstrap)" "${wires[meta.bootstrap]}"
printf '| an agent upgrade: the same tiny copy to a host that runs an older agent | %.3f s, %s bytes on the wire |\n' "$(median meta upgrade)" "${wires[meta.upgrade]}"
printf '| first copy of a 2,000-path closure (1 KiB paths; agent bootstrap included) | %.3f s, %s bytes on the wire |\n' "$(median meta first)" "${wires[meta.first]}"
printf '| no-op copy of a 2,000-path closure (all present) | %.3f s, %s bytes on the wire |\n' "$(median meta noop)" "${wires[meta.noop]}"
printf '| one-file change in that closure (1 path + the root re-sent) | %s NAR bytes, %s bytes on the wire |\n' "$inc_nar" "$w_inc"
