#!/usr/bin/env bash
# Closure copy vs raw ssh, rsync and nix copy, side by side in one run, over
# the same link: a real OpenSSH sshd on 127.0.0.1 (root; needs openssh-server,
# rsync, nix-bin, nftables, bc).
#   bench/copy.sh [SIZE] [disk|tmpfs]   (default 512MiB disk)
# With "tmpfs" every target (our store, rsync's and nix's destination) is on
# /dev/shm, which takes the disk out and measures the protocols themselves.
# Prints a Markdown table (best of 3, each run into an empty target) and the
# no-op / incremental measurements. Bytes on the wire are counted by an nft
# counter on the sshd port.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-512MiB}
on=${2:-disk}
export GOTOOLCHAIN=local
w=$(mktemp -d /var/tmp/deploy-copybench.XXXXXX)
port=$((20000 + RANDOM % 20000))
cleanup() {
	[ -f "$w/sshd.pid" ] && kill "$(cat "$w/sshd.pid")" 2>/dev/null || true
	nft delete table inet deploybench 2>/dev/null || true
	chmod -R u+w "$w" "${tb:-$w}" 2>/dev/null; rm -rf "$w" "${tb:-$w}"
}
trap cleanup EXIT
mkdir -p "$w/bin"
CGO_ENABLED=0 go build -trimpath -o "$w/bin/" ./cmd/deploy ./cmd/deploy-agent
go run ./bench/gentree -size "$size" "$w/tree" >/dev/null
D=$w/bin/deploy

# sshd on loopback, root login with a fresh key.
ssh-keygen -q -t ed25519 -N '' -f "$w/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$w/id"
cp "$w/id.pub" "$w/authorized_keys"
cat > "$w/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $w/hostkey
AuthorizedKeysFile $w/authorized_keys
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile $w/sshd.pid
Subsystem sftp internal-sftp
CFG
mkdir -p /run/sshd
/usr/sbin/sshd -f "$w/sshd_config" -E "$w/sshd.log"
for _ in $(seq 50); do [ -f "$w/sshd.pid" ] && break; sleep 0.1; done
echo "[127.0.0.1]:$port $(cut -d' ' -f1,2 "$w/hostkey.pub")" > "$w/known_hosts"
SSHOPTS="-p $port -i $w/id -o UserKnownHostsFile=$w/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"
hostkey=$(cut -d' ' -f1,2 "$w/hostkey.pub")

nft add table inet deploybench
nft add chain inet deploybench out '{ type filter hook output priority 0; }'
nft add rule inet deploybench out tcp dport "$port" counter
# Rule counters cannot be reset by 'nft reset counters' (named counters only):
# measure the difference from a baseline.
counter() { nft list chain inet deploybench out | sed -n 's/.*counter packets [0-9]* bytes \([0-9]*\).*/\1/p'; }
wire_base=0
reset_wire() { wire_base=$(counter); }
wire() { echo $(( $(counter) - wire_base )); }

tb=$w
if [ "$on" = tmpfs ]; then tb=$(mktemp -d /dev/shm/deploy-copybench.XXXXXX); fi
T=$tb/target
STORE=$T/store
"$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/tree" > "$w/path"
P=$(cat "$w/path")
"$D" nar dump "$w/tree" > "$w/tree.nar"
narsize=$(stat -c %s "$w/tree.nar")
# Nix's source store holds the same tree.
NIXSRC=$w/nixsrc
nixpath=$(NIX_REMOTE= nix-store --store "$NIXSRC" --add "$w/tree")

now() { date +%s.%N; }
best() { # best of 3 of "$1", with "$2" run before each try; prints seconds and wire bytes
	local b="" bw=""
	for _ in 1 2 3; do
		bash -c "$2"
		reset_wire
		local s=$(now)
		bash -c "$1" >/dev/null 2>>"$w/errors" || { echo "failed: $1" >&2; cat "$w/errors" >&2; exit 1; }
		local e=$(now)
		local t=$(echo "$e - $s" | bc -l)
		if [ -z "$b" ] || (( $(echo "$t < $b" | bc -l) )); then b=$t; bw=$(wire); fi
	done
	echo "$b $bw"
}
wipe_target="chmod -R u+w $T 2>/dev/null; rm -rf $T $tb/rsync $tb/nixdst"
read t_raw w_raw < <(best "ssh $SSHOPTS root@127.0.0.1 'cat > /dev/null' < $w/tree.nar" "true")
read t_ours w_ours < <(best "$D copy --cache-dir $w/cache --store-dir $STORE --remote-state-dir $T --to root@127.0.0.1:$port --host-key '$hostkey' --identity $w/id --ssh-config none $P" "$wipe_target")
read t_rsync w_rsync < <(best "rsync -a -e 'ssh $SSHOPTS' $w/tree/ root@127.0.0.1:$tb/rsync/" "$wipe_target")
read t_nix w_nix < <(best "NIX_SSHOPTS='$SSHOPTS' nix --extra-experimental-features nix-command copy --no-check-sigs --from 'local?root=$NIXSRC' --to 'ssh://root@127.0.0.1?remote-store=local%3Froot%3D$tb/nixdst' $nixpath" "$wipe_target")

rate() { echo "$narsize / $1 / 1048576" | bc -l; }
echo "targets on $on ($(df --output=fstype "$tb" | tail -1)); tree: $(find "$w/tree" -type f | wc -l) files, NAR $narsize bytes; sshd $(/usr/sbin/sshd -V 2>&1 | head -1); $(nix --version)"
echo
echo "| copy of the same tree to an empty target | seconds (best of 3) | MiB/s | ours as a share of it | bytes on the wire |"
echo "|---|---:|---:|---:|---:|"
printf '| raw `ssh host '"'"'cat > /dev/null'"'"'` of the NAR | %.3f | %.0f | %.0f%% of its throughput | %s |\n' "$t_raw" "$(rate "$t_raw")" "$(echo "100 * $t_raw / $t_ours" | bc -l)" "$w_raw"
printf '| `deploy copy` (bootstrap, stream, verify, fsync, register) | %.3f | %.0f | — | %s |\n' "$t_ours" "$(rate "$t_ours")" "$w_ours"
printf '| `rsync -a` over ssh | %.3f | %.0f | %.2fx faster | %s |\n' "$t_rsync" "$(rate "$t_rsync")" "$(echo "$t_rsync / $t_ours" | bc -l)" "$w_rsync"
printf '| `nix copy --to ssh://` | %.3f | %.0f | %.2fx faster | %s |\n' "$t_nix" "$(rate "$t_nix")" "$(echo "$t_nix / $t_ours" | bc -l)" "$w_nix"

# No-op copy of a 2,000-path closure, and a one-file change.
mkdir -p "$w/many"
refs=()
for i in $(seq 1 1999); do
	mkdir -p "$w/many/p$i"; echo "path $i" > "$w/many/p$i/f"
done
"$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/many/p1" >/dev/null
list=$(for i in $(seq 1 1999); do echo "$w/many/p$i"; done)
for i in $(seq 1 1999); do "$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/many/p$i"; done > "$w/many.paths"
refargs=$(sed 's/^/--ref /' "$w/many.paths" | tr '\n' ' ')
mkdir -p "$w/rootdir"; echo root > "$w/rootdir/f"
R=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" --name root $refargs "$w/rootdir")
COPY="$D copy --cache-dir $w/cache --store-dir $STORE --remote-state-dir $T --to root@127.0.0.1:$port --host-key '$hostkey' --identity $w/id --ssh-config none"
bash -c "$COPY $R" >/dev/null 2>>"$w/errors" || { echo "failed: first copy of the 2,000-path closure" >&2; cat "$w/errors" >&2; exit 1; }
read t_noop w_noop < <(best "$COPY $R" "true")
# One file changes in one 1 KiB path: only that path and the root are sent.
echo "path 1 changed" > "$w/many/p1/f"
P1=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" "$w/many/p1")
refargs2=$(sed 1d "$w/many.paths" | sed 's/^/--ref /' | tr '\n' ' ')
echo root2 > "$w/rootdir/f"
R2=$("$D" store add --cache-dir "$w/cache" --store-dir "$STORE" --name root $refargs2 --ref "$P1" "$w/rootdir")
reset_wire
bash -c "$COPY --json $R2" > "$w/inc.json" 2>/dev/null
w_inc=$(wire)
inc_nar=$(grep '"copy.done"' "$w/inc.json" | sed 's/.*"total":\([0-9]*\).*/\1/')
reset_wire
bash -c "$COPY $R2" >/dev/null 2>&1
w_noop2=$(wire)
echo
echo "| measurement | result |"
echo "|---|---|"
printf '| no-op copy of a 2,000-path closure (all present) | %.3f s, %s bytes on the wire |\n' "$t_noop" "$w_noop"
printf '| one-file change in that closure (1 path + the root re-sent) | %s NAR bytes, %s bytes on the wire |\n' "$inc_nar" "$w_inc"
printf '| the same no-op, measured again | %s bytes on the wire (handshake + want list + reply) |\n' "$w_noop2"
