#!/usr/bin/env bash
# shmd under a real systemd: boots a Debian container with systemd-nspawn,
# installs the packages in it with dpkg and checks what the packages and
# the units promise. Run by CTest (tests/CMakeLists.txt), which passes:
#
#   DEB_DIR     the built packages (the package.build test makes them)
#   CACHE_DIR   where the container's tree is kept between runs
#               (CACHE_DIR/rootfs, made by debootstrap on the first run)
#
# Skipped (77) where no container can boot here: not root, no
# systemd-nspawn or debootstrap, no mirror in the apt sources, debootstrap
# or the boot failing. Once the container has booted every check counts.
#
# The container's systemd is driven from outside with nsenter into its
# PID 1. Waits are bounded by generous caps that only a hang reaches.
set -euo pipefail

say() { echo "== $*"; }
skip() { echo "systemd e2e: $*; skipped"; exit 77; }
fail() {
    echo "systemd e2e: FAILED: $*" >&2
    if [ -n "${pid1:-}" ]; then
        echo "--- journal of shmd.service in the container:" >&2
        in_ct journalctl --no-pager -n 40 -u shmd.service -u shmctl-gc.service >&2 || true
    fi
    exit 1
}
for v in DEB_DIR CACHE_DIR; do
    [ -n "${!v:-}" ] || fail "$v is not set (run this through ctest)"
done

[ "$(id -u)" -eq 0 ] || skip "needs root to boot a container"
for t in systemd-nspawn debootstrap nsenter dpkg-deb; do
    command -v "$t" >/dev/null ||
        skip "$t not found (Debian packages systemd-container, debootstrap, util-linux, dpkg: ./dev deps installs them)"
done
shopt -s nullglob
debs=("$DEB_DIR"/libshm0_*.deb "$DEB_DIR"/shmd_*.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 2 ] || skip "libshm0 and shmd packages not found in $DEB_DIR (package.build makes them)"

# --- the container's tree: made once, kept in CACHE_DIR --------------------

# The mirror and release of this machine's own apt sources (one-line and
# deb822 formats): the first "deb" source of this release's main suite.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || skip "no VERSION_CODENAME in /etc/os-release"
mirror=$(python3 - "$codename" <<'PY'
import glob, re, sys
codename = sys.argv[1]
def one_line(path):
    for line in open(path, encoding="utf-8", errors="replace"):
        line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb" and line[2] == codename:
            yield line[1]
def deb822(path):
    for para in re.split(r"\n\s*\n", open(path, encoding="utf-8", errors="replace").read()):
        fields = {}
        for line in para.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            k, v = line.split(":", 1)
            fields[k.strip().lower()] = v.split()
        if (fields.get("enabled", ["yes"])[0] != "no" and "deb" in fields.get("types", [])
                and codename in fields.get("suites", []) and fields.get("uris")):
            yield fields["uris"][0]
files = [("/etc/apt/sources.list", one_line)]
files += [(p, one_line) for p in sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
files += [(p, deb822) for p in sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))]
for path, parse in files:
    try:
        for uri in parse(path):
            print(uri)
            sys.exit(0)
    except OSError:
        pass
PY
) || true
[ -n "$mirror" ] || skip "no 'deb' source for $codename in /etc/apt/sources.list{,.d/*}"

# What the container needs: systemd, and what our packages depend on (their
# Depends fields, first alternatives, without versions), bar our own.
needed=(systemd systemd-sysv dbus)
for deb in "${debs[@]}"; do
    for dep in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/:any//' | tr -d ' '); do
        case "$dep" in libshm0|shmd|"") continue ;; esac
        # debootstrap takes real packages only: a virtual one (such as
        # libspdlog1.10-fmt9) becomes the package of this machine, where the
        # packages were built, that provides it.
        if ! dpkg-query -W -f='${Status}\n' "$dep" 2>/dev/null | grep -q "install ok installed"; then
            real=$(dpkg-query -W -f='${Package}\t${Provides}\n' |
                awk -F'\t' -v d="$dep" '{ n = split($2, p, /, */); for (i = 1; i <= n; i++) { sub(/ .*/, "", p[i]); if (p[i] == d) { print $1; exit } } }' || true)
            [ -n "$real" ] || fail "no package of this machine provides $dep, which the packages depend on"
            dep=$real
        fi
        needed+=("$dep")
    done
done
mapfile -t needed < <(printf '%s\n' "${needed[@]}" | sort -u)

mkdir -p "$CACHE_DIR"
rootfs="$CACHE_DIR/rootfs"
tree_has_all() {
    [ -f "$rootfs/.libshm-e2e-complete" ] || return 1
    local p
    for p in "${needed[@]}"; do
        dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Status}\n' "$p" 2>/dev/null |
            grep -q "install ok installed" || return 1
    done
}
if ! tree_has_all; then
    say "debootstrap --variant=minbase $codename into $rootfs (from $mirror; kept for later runs)"
    rm -rf "$rootfs" "$rootfs.new"
    include=$(IFS=,; echo "${needed[*]}")
    if ! debootstrap --variant=minbase --include="$include" "$codename" "$rootfs.new" "$mirror" \
            >"$CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$CACHE_DIR/debootstrap.log"
        rm -rf "$rootfs.new"
        skip "debootstrap failed (above; the whole log: $CACHE_DIR/debootstrap.log)"
    fi
    touch "$rootfs.new/.libshm-e2e-complete"
    mv "$rootfs.new" "$rootfs"
else
    say "the container's tree: $rootfs (kept from an earlier run)"
fi

# --- boot -------------------------------------------------------------------

# A run stopped half-way may have left our packages installed in the tree:
# each run starts without them (dpkg's database is read from outside).
leftover=$(dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Package} ${Status}\n' libshm0 shmd 2>/dev/null |
    awk '$NF != "not-installed" { print $1 }' || true)
ct_debs="$rootfs/root/libshm-debs"
rm -rf "$ct_debs"
mkdir -p "$ct_debs"
for deb in "${debs[@]}"; do cp "$deb" "$ct_debs/"; done

log="$CACHE_DIR/nspawn.log"
nspawn_pid=""
pid1=""
in_ct() { nsenter -t "$pid1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= "$@"; }
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        [ -z "$pid1" ] || in_ct systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 600); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 300); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    [ -z "$nspawn_pid" ] || wait "$nspawn_pid" 2>/dev/null || true
    rm -rf "$ct_debs"
}
trap cleanup EXIT

say "systemd-nspawn --boot (log: $log)"
systemd-nspawn --boot --register=no --keep-unit --console=read-only --quiet \
    --machine="libshm-e2e-$$" -D "$rootfs" >"$log" 2>&1 </dev/null &
nspawn_pid=$!

# The container's PID 1 is a child of nspawn running systemd.
for _ in $(seq 1200); do
    kill -0 "$nspawn_pid" 2>/dev/null || break
    for c in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null); do
        if [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ]; then pid1=$c; break 2; fi
    done
    sleep 0.1
done
if [ -z "$pid1" ]; then
    tail -n 20 "$log"
    skip "the container did not boot (nspawn's output above)"
fi
# systemctl reaches PID 1 only once it has made its private socket, a moment
# after it starts: until then it fails to connect, and is asked again.
state=""
for _ in $(seq 600); do
    state=$(timeout 300 nsenter -t "$pid1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        systemctl is-system-running --wait 2>&1 || true)
    [[ "$state" == *"Failed to connect"* ]] || break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
case "$state" in
    running|degraded) echo "  PID 1 of the container: $pid1 on this machine; system $state" ;;
    *) tail -n 20 "$log"; skip "the container's systemd did not finish booting (is-system-running: $state)" ;;
esac
[ "$state" = running ] || in_ct systemctl --failed --no-legend || true

if [ -n "$leftover" ]; then
    say "purge what an earlier run left: $leftover"
    in_ct dpkg --purge $leftover >/dev/null || fail "purging $leftover"
fi

# --- install ----------------------------------------------------------------

names=()
for deb in "${debs[@]}"; do names+=("/root/libshm-debs/$(basename "$deb")"); done
say "dpkg -i ${names[*]##*/}"
in_ct dpkg -i "${names[@]}" || fail "dpkg -i"
prop() { in_ct systemctl show -P "$2" "$1"; }
expect_state() { # UNIT WHAT EXPECTED
    local got
    got=$(in_ct systemctl "$2" "$1" 2>&1 || true)
    [ "$got" = "$3" ] || fail "systemctl $2 $1: '$got', expected '$3'"
    echo "  $1: $2 $got"
}
expect_state shmd.service is-enabled enabled
expect_state shmctl-gc.timer is-enabled enabled
expect_state shmd.service is-active active
expect_state shmctl-gc.timer is-active active
in_ct test -f /etc/shmd.conf || fail "no /etc/shmd.conf"
in_ct shmctl status >/dev/null || fail "shmctl status does not reach the shmd the package started"

# --- start: active only once shmd said READY=1 (Type=notify) ----------------

say "systemctl stop, then start shmd"
in_ct systemctl stop shmd.service || fail "systemctl stop shmd"
expect_state shmd.service is-active inactive
timeout 300 nsenter -t "$pid1" -a systemctl start shmd.service || fail "systemctl start shmd"
expect_state shmd.service is-active active
[ "$(prop shmd.service Type)" = notify ] || fail "shmd.service is not Type=notify"
status=$(prop shmd.service StatusText)
[[ "$status" == tracking* ]] || fail "no STATUS= from shmd after READY=1 (StatusText '$status')"
echo "  StatusText: $status"
in_ct shmctl status >/dev/null || fail "shmctl status after start"

# --- the watchdog keeps it alive --------------------------------------------

wd=$(prop shmd.service WatchdogUSec)
wd_us=$(in_ct systemd-analyze timespan "$wd" | sed -nE 's/^ *μs: *([0-9]+).*/\1/p')
[ -n "$wd_us" ] && [ "$wd_us" -gt 0 ] || fail "shmd.service has no watchdog (WatchdogUSec '$wd')"
wd_s=$(( (wd_us + 999999) / 1000000 ))
main=$(prop shmd.service MainPID)
restarts=$(prop shmd.service NRestarts)
ping0=$(prop shmd.service WatchdogTimestampMonotonic)
wait_s=$(( 3 * wd_s + 2 ))
say "watchdog every $wd: shmd stays active for $wait_s s (3 intervals), MainPID $main"
for _ in $(seq "$wait_s"); do
    sleep 1
    [ "$(in_ct systemctl is-active shmd.service || true)" = active ] || fail "shmd.service stopped being active"
done
[ "$(prop shmd.service MainPID)" = "$main" ] || fail "shmd's MainPID changed from $main: it was restarted"
[ "$(prop shmd.service NRestarts)" = "$restarts" ] || fail "shmd was restarted during the watchdog wait"
ping1=$(prop shmd.service WatchdogTimestampMonotonic)
[ "$ping1" -gt "$ping0" ] || fail "no WATCHDOG=1 from shmd in $wait_s s (last ping at $ping0 µs)"
echo "  still active, same MainPID, last watchdog ping $(( (ping1 - ping0) / 1000000 )) s after the first"

# --- kill -9: systemd restarts it, clients reach the new one ----------------

say "kill -9 shmd (MainPID $main)"
# The shell's kill: minbase has no /bin/kill (procps).
in_ct sh -c "kill -9 $main" || fail "kill -9 $main"
new=""
for _ in $(seq 1200); do
    sleep 0.1
    p=$(prop shmd.service MainPID)
    if [ "$p" != 0 ] && [ "$p" != "$main" ] && [ "$(in_ct systemctl is-active shmd.service || true)" = active ]; then
        new=$p
        break
    fi
done
[ -n "$new" ] || fail "shmd was not restarted within 120 s of kill -9 (state $(in_ct systemctl is-active shmd.service || true))"
[ "$(prop shmd.service NRestarts)" -gt "$restarts" ] || fail "NRestarts did not grow after the restart"
echo "  restarted: MainPID $new, NRestarts $(prop shmd.service NRestarts)"
in_ct shmctl status >/dev/null || fail "shmctl status does not reach the restarted shmd"
echo "  shmctl status reaches the new shmd"

# --- the gc timer -----------------------------------------------------------

say "shmctl-gc.timer"
in_ct systemctl list-timers --all --no-legend shmctl-gc.timer | grep -q 'shmctl-gc.timer' ||
    fail "systemctl list-timers does not show shmctl-gc.timer"
next=$(prop shmctl-gc.timer NextElapseUSecMonotonic)
[ -n "$next" ] && [ "$next" != 0 ] && [ "$next" != infinity ] || fail "shmctl-gc.timer has no next run ($next)"
echo "  scheduled: $(in_ct systemctl list-timers --all --no-legend shmctl-gc.timer)"
# What the timer starts, run now: shmctl gc in its sandbox.
timeout 300 nsenter -t "$pid1" -a systemctl start shmctl-gc.service || fail "systemctl start shmctl-gc.service"
[ "$(prop shmctl-gc.service Result)" = success ] || fail "shmctl-gc.service: Result=$(prop shmctl-gc.service Result)"
echo "  shmctl-gc.service ran: Result=success"

# --- stop is clean ----------------------------------------------------------

say "systemctl stop shmd"
in_ct systemctl stop shmd.service || fail "systemctl stop shmd"
expect_state shmd.service is-active inactive
[ "$(prop shmd.service Result)" = success ] || fail "shmd.service stopped with Result=$(prop shmd.service Result)"
in_ct test ! -e /run/shmd/shmd.sock || fail "the socket /run/shmd/shmd.sock outlived shmd"
echo "  Result=success, no socket left"

# --- remove stops the units, purge removes the configuration ----------------

in_ct systemctl start shmd.service || fail "systemctl start shmd (before removal)"
say "dpkg -r shmd"
in_ct dpkg -r shmd >/dev/null || fail "dpkg -r shmd"
expect_state shmd.service is-active inactive
expect_state shmctl-gc.timer is-active inactive
in_ct test -f /etc/shmd.conf || fail "dpkg -r removed /etc/shmd.conf (a conffile, kept until purge)"
say "dpkg --purge shmd libshm0"
in_ct dpkg --purge shmd libshm0 >/dev/null || fail "dpkg --purge"
in_ct test ! -e /etc/shmd.conf || fail "/etc/shmd.conf is left after purge"
echo "  /etc/shmd.conf removed"

# --- power off --------------------------------------------------------------

say "poweroff"
in_ct systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 1200); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$nspawn_pid" 2>/dev/null && fail "the container did not power off within 120 s"
rc=0
wait "$nspawn_pid" || rc=$?
nspawn_pid=""
[ "$rc" -eq 0 ] || fail "systemd-nspawn exited with $rc after poweroff (log: $log)"
echo "systemd e2e: passed"
