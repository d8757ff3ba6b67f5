package simhost

// standin is the systemd stand-in, bind-mounted over /usr/bin/systemctl and
// /usr/bin/systemd-run in each host: a simulation of systemd, not of the
// agent. It records every call and answers as a system whose every unit is
// loaded, enabled and active. What the agent parses (activation):
//
//   - `systemctl is-active -- UNIT` (a unit_active check): "active", exit 0
//   - `systemctl is-system-running --wait` (Layout.Health): "running"
//   - `systemctl show -p Id -p LoadState -p ActiveState -p SubState
//     -p UnitFileState -- UNIT...` (unitStates): one block per unit,
//     blank lines between, KEY=VALUE lines
//   - `systemctl show -p ActiveState -p SubState -p Result -- UNIT`
//     (unitFailed): active, running, success
//   - `systemctl show --property=P --value UNIT` (unitAlive, stop): the
//     value alone
//   - daemon-reload, start, stop, restart, try-restart, reload-or-restart,
//     enable, kill, ...: exit 0
//
// systemd-run is recorded and refused: without /run/systemd/system the
// agent never calls it, so a call is a harness bug to see, not to answer.
const standin = `#!/bin/sh
# simhost's systemd stand-in: a simulation of systemd, not of the agent,
# the store, the network or S3. Records each call, answers "all active".
name=${0##*/}
printf '%s %s\n' "$name" "$*" >> /run/simhost/systemd-calls.log
if [ "$name" = systemd-run ]; then
	echo "simhost: systemd-run is not simulated (this host has no /run/systemd/system)" >&2
	exit 1
fi
verb= value= props= units=
# addprops adds a comma-separated list of properties (no subshell, no tr:
# the stand-in costs a host about what one real systemctl call does).
addprops() {
	ifs=$IFS; IFS=,
	for p in $1; do props="$props $p"; done
	IFS=$ifs
}
while [ $# -gt 0 ]; do
	case $1 in
	--value) value=1 ;;
	-p|--property) shift; addprops "$1" ;;
	--property=*) addprops "${1#--property=}" ;;
	--) shift; units="$units $*"; break ;;
	-*) ;;
	*) if [ -z "$verb" ]; then verb=$1; else units="$units $1"; fi ;;
	esac
	shift
done
answer() { # unit property prefix
	case $2 in
	Id) v=$1 ;;
	LoadState) v=loaded ;;
	ActiveState) v=active ;;
	SubState) v=running ;;
	Result) v=success ;;
	UnitFileState) v=enabled ;;
	*) v= ;;
	esac
	printf '%s%s\n' "$3" "$v"
}
case $verb in
is-active)
	for u in $units; do echo active; done ;;
is-enabled)
	for u in $units; do echo enabled; done ;;
is-failed)
	for u in $units; do echo active; done
	exit 1 ;;
is-system-running)
	echo running ;;
show)
	[ -n "$props" ] || props="Id LoadState ActiveState SubState Result UnitFileState"
	first=1
	for u in $units; do
		[ -n "$first" ] || echo
		first=
		for p in $props; do
			if [ -n "$value" ]; then answer "$u" "$p" ""; else answer "$u" "$p" "$p="; fi
		done
	done ;;
esac
exit 0
`
