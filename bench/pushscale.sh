#!/usr/bin/env bash
# Push at scale, side by side: the first deploy and the no-op redeploy of N
# vmtest hosts, for two or more builds of deploy, in alternating rounds (A B
# A B ...) so that load on the machine hits every build alike (root; what
# vmtest needs).
#
#   bench/pushscale.sh [-n HOSTS] [-r ROUNDS] [-k NOOPS] LABEL=BINDIR ...
#
# BINDIR holds a build's deploy and deploy-agent (deploy finds the agent
# beside itself), e.g. for a commit C:
#
#   git worktree add /tmp/old C && cd /tmp/old &&
#     CGO_ENABLED=0 go build -trimpath -o /tmp/bin-old/ ./cmd/deploy ./cmd/deploy-agent
#
# Each round, for each build in turn: boot HOSTS fresh vmtest hosts
# (bench/vmhost), write the fleet for them (per host: a Go service built
# from source, its configuration file, a system user, an HTTP health
# check), build it (`deploy build`, warm after the first round, not
# timed), then time `deploy --json DIR#@bench` (the first deploy: the agent's
# bootstrap, the copy, activation, confirmation) and NOOPS no-op redeploys
# (every host must say unchanged), then tear the hosts down. Each build
# keeps its own XDG_CACHE_HOME (its own local store) for all rounds; the Go
# build and module caches are the machine's (GOCACHE, GOMODCACHE).
#
# Prints one line per timed run: build, round, what, hosts, wall seconds,
# user and system CPU seconds of deploy itself, its peak RSS, the CPU
# seconds the hosts used meanwhile (their cgroups' usage: sshd, agents,
# systemd, the services), the 1-minute load average just before the run,
# then a summary (median per build and kind) at the end. The hosts' CPU
# seconds hardly depend on the machine's load; wall seconds do. A build
# whose run.done event counts SSH use adds conns= and sessions= (per host,
# min-max over the hosts). COUNT=1 also counts the processes that ran in
# the hosts during each run (bench/procacct.py: BSD process accounting in
# each host's PID namespace) and prints them per host below the run's line. DEPLOY_FLAGS adds flags to every deploy run; KEEP=1
# leaves the work directory (logs, events) behind.
set -euo pipefail
cd "$(dirname "$0")/.."
n=10 rounds=2 noops=3
while getopts n:r:k: o; do
	case $o in
	n) n=$OPTARG ;;
	r) rounds=$OPTARG ;;
	k) noops=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-n HOSTS] [-r ROUNDS] [-k NOOPS] LABEL=BINDIR ..." >&2; exit 2; }
export GOTOOLCHAIN=local
w=$(mktemp -d /var/tmp/deploy-pushscale.XXXXXX)
vmpid=
cleanup() {
	if [ -n "$vmpid" ]; then kill "$vmpid" 2>/dev/null || true; wait "$vmpid" 2>/dev/null || true; fi
	[ -n "${KEEP:-}" ] && { echo "kept $w" >&2; return; }
	rm -rf "$w"
}
trap cleanup EXIT
CGO_ENABLED=0 go build -o "$w/vmhost" ./bench/vmhost
# The Go package of the fleet builds with the machine's caches, not in each
# build's own HOME.
GOCACHE=$(go env GOCACHE) GOMODCACHE=$(go env GOMODCACHE)
export GOCACHE GOMODCACHE

# The fleet, but for its hosts (written per boot: host keys change).
mkdir -p "$w/fleet/hello"
cp examples/quickstart/hello/main.go examples/quickstart/hello/go.mod "$w/fleet/hello/"
cat >"$w/fleet/role.hcl" <<'EOF'
role "web" {
  package "hello" {
    go { src = "./hello" }
  }
  user "hello" {
    system = true
  }
  file "/etc/hello/config.json" {
    content = "{\"listen\": \":8080\", \"greeting\": \"hello\", \"host\": \"${host.name}\"}\n"
    owner   = "root"
    mode    = "0644"
  }
  service "hello" {
    exec_start = "${package.hello}/bin/hello -config /etc/hello/config.json"
    user       = "hello"
    restart    = "always"
  }
  health_check "hello-http" {
    url     = "http://127.0.0.1:8080/healthz"
    timeout = "20s"
  }
}
EOF

boot() {
	rm -rf "$w/vm" && mkdir -p "$w/vm"
	"$w/vmhost" -n "$n" -out "$w/vm" >"$w/vm/stdout" 2>"$w/vm/log" &
	vmpid=$!
	for _ in $(seq 600); do
		grep -q ready "$w/vm/stdout" 2>/dev/null && break
		kill -0 "$vmpid" 2>/dev/null || { cat "$w/vm/log" >&2; exit 1; }
		sleep 0.5
	done
	grep -q ready "$w/vm/stdout" || { echo "hosts did not boot" >&2; exit 1; }
	# shellcheck disable=SC1091
	. "$w/vm/env"
	run=$(sed -n 's/.*vmtest: run \([0-9a-f]*\):.*/\1/p' "$w/vm/log" | head -1)
	cg=/sys/fs/cgroup/unified/deploy-vmtest/$run
	[ -r "$cg/cpu.stat" ] || cg=/sys/fs/cgroup/deploy-vmtest/$run
	i=0
	: >"$w/fleet/hosts.hcl"
	while read -r addr key; do
		i=$((i + 1))
		printf 'host "h%d" {\n  address  = "%s"\n  host_key = "%s"\n  tags     = ["bench"]\n  roles    = [role.web]\n}\n' "$i" "$addr" "$key" >>"$w/fleet/hosts.hcl"
	done <"$w/vm/known_hosts"
}

# hostcpu is the CPU microseconds the hosts have used so far.
hostcpu() { sed -n 's/^usage_usec //p' "$cg/cpu.stat"; }

halt() {
	kill "$vmpid" 2>/dev/null || true
	wait "$vmpid" 2>/dev/null || true
	vmpid=
}

# timed LABEL BIN ROUND WHAT: one deploy run, one result line.
timed() {
	local label=$1 bin=$2 round=$3 what=$4
	local load
	load=$(cut -d' ' -f1 /proc/loadavg)
	local out="$w/$label-$round-$what"
	local cpu0
	cpu0=$(hostcpu)
	[ -z "${COUNT:-}" ] || /usr/bin/python3 bench/procacct.py on "$cg" "$out.acct"
	# shellcheck disable=SC2086
	nsenter --net="$NETNS" env HOME="$w/home-$label" XDG_CACHE_HOME="$w/home-$label/cache" SSH_AUTH_SOCK= \
		/usr/bin/time -f '%e %U %S %M' -o "$out.time" \
		"$bin/deploy" --json --identity "$w/vm/id" --ssh-config none ${DEPLOY_FLAGS:-} "$w/fleet#@bench" >"$out.json" 2>"$out.err" ||
		{ echo "$label $what: deploy failed:" >&2; tail -20 "$out.err" >&2; exit 1; }
	local want=ok
	[ "$what" = first ] || want=unchanged
	local got
	got=$(grep -c "\"event\":\"host.result\".*\"result\":\"$want\"" "$out.json" || true)
	[ "$got" -eq "$n" ] || { echo "$label $what: $got of $n hosts $want" >&2; exit 1; }
	local cpu1
	cpu1=$(hostcpu)
	[ -z "${COUNT:-}" ] || /usr/bin/python3 bench/procacct.py off "$cg"
	local ssh
	ssh=$(/usr/bin/python3 -c '
import json, sys
for line in open(sys.argv[1]):
    ev = json.loads(line)
    if ev.get("event") == "run.done" and ev.get("ssh"):
        c = [h["connections"] for h in ev["ssh"].values()]
        s = [h["sessions"] for h in ev["ssh"].values()]
        print(f" conns={min(c)}-{max(c)} sessions={min(s)}-{max(s)}")
' "$out.json")
	read -r wall usr sys rss <"$out.time"
	printf '%-10s round=%d %-6s hosts=%-3d wall=%6.2fs user=%6.2fs sys=%5.2fs rss=%4dMB hostcpu=%6.2fs load1=%s%s\n' \
		"$label" "$round" "$what" "$n" "$wall" "$usr" "$sys" $((rss / 1024)) "$(echo "$cpu0 $cpu1" | awk '{printf "%.2f", ($2-$1)/1e6}')" "$load" "$ssh" | tee -a "$w/results"
	[ -z "${COUNT:-}" ] || /usr/bin/python3 bench/procacct.py count "$out.acct" | tail -1 | sed 's/^/    processes /'
}

echo "pushscale: $n hosts, $rounds rounds, $noops no-op redeploys; $(uptime)"
for round in $(seq "$rounds"); do
	for spec in "$@"; do
		label=${spec%%=*} bin=${spec#*=}
		boot
		nsenter --net="$NETNS" env HOME="$w/home-$label" XDG_CACHE_HOME="$w/home-$label/cache" \
			"$bin/deploy" build "$w/fleet#@bench" >/dev/null 2>"$w/build.err" || { cat "$w/build.err" >&2; exit 1; }
		timed "$label" "$bin" "$round" first
		for k in $(seq "$noops"); do
			timed "$label" "$bin" "$round" noop
		done
		halt
	done
done
echo "pushscale: done; $(uptime)"
echo
echo "medians per build and kind (wall, deploy's CPU user+sys, the hosts' CPU; load1 range):"
for spec in "$@"; do
	label=${spec%%=*}
	for what in first noop; do
		grep "^$label .* $what " "$w/results" | sed 's/= */=/g' | awk -v l="$label" -v w="$what" '
			function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
				return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
			{ for (i = 1; i <= NF; i++) { split($i, kv, "="); v = kv[2]; sub(/s$/, "", v)
				if (kv[1] == "wall") wall[NR] = v + 0; if (kv[1] == "user") u = v; if (kv[1] == "sys") cpu[NR] = u + v
				if (kv[1] == "hostcpu") host[NR] = v + 0; if (kv[1] == "load1") { ld[NR] = v + 0; if (NR == 1 || v + 0 < lo) lo = v + 0; if (NR == 1 || v + 0 > hi) hi = v + 0 } } }
			END { if (NR) printf "  %-10s %-6s %d runs: wall %.2fs  deploy CPU %.2fs  hosts CPU %.2fs  (load1 %.1f-%.1f)\n", l, w, NR, med(wall, NR), med(cpu, NR), med(host, NR), lo, hi }'
	done
done
