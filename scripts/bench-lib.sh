# shellcheck shell=bash
# The statistics and goal verdicts every scripts/bench-* script reports, sourced by each
# (`. "$(dirname "$0")/bench-lib.sh"`) so that they share one definition, which
# tests/bench_verdicts.rs holds to these rules:
#
#   - a series without readings has no median, minimum or maximum: they print nothing, never 0;
#   - a goal whose reading is missing gets the verdict "missing", never "met";
#   - a build through a cache that restored fewer rules than the cache holds is "MISSED",
#     however fast it was: rebuilding rules is not the cache meeting its goal.
#
# A verdict is "met", "MISSED" (measured, short of the goal) or "missing" (nothing to judge);
# scripts/bench counts the last two alike as goals not met. Safe under `set -euo pipefail`.

# The numbers of SERIES (separated by spaces or newlines), one per line, smallest first.
readings() { tr -s '[:blank:]' '\n' <<<"$1" | awk 'NF' | sort -g; }
# The median of SERIES; nothing for an empty series.
median() {
  readings "$1" | awk '{v[NR] = $1}
    END {if (NR) print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# The smallest and the largest of SERIES; nothing for an empty series.
minimum() { readings "$1" | awk 'NR == 1'; }
maximum() { readings "$1" | awk '{last = $0} END {if (NR) print last}'; }
# A / B to two decimals; nothing when either is missing or B is 0.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {if (a != "" && b != "" && b + 0 != 0) printf "%.2f", a / b}'
}
# VALUE to DIGITS decimals (default 3); nothing for no value.
decimals() { awk -v x="$1" -v d="${2:-3}" 'BEGIN {if (x != "") printf "%.*f", d, x}'; }

# The verdict on READING against GOAL, OP being >= (at least) or <= (at most): met, MISSED, or
# missing when READING is empty or not a number.
verdict() { # READING OP GOAL
  awk -v x="$1" -v op="$2" -v g="$3" 'BEGIN {
    if (op != ">=" && op != "<=") {print "verdict: OP is >= or <=, not " op > "/dev/stderr"; exit 2}
    if (x !~ /^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$/) {print "missing"; exit}
    met = (op == ">=") ? (x + 0 >= g + 0) : (x + 0 <= g + 0)
    print met ? "met" : "MISSED"
  }'
}

# The verdict on a build through a cache: SPEED (relative to the reference) at least GOAL, and
# every one of the RULES rules the cache holds restored (HITS, the fewest cache hits of any run).
# missing without a speed or a hit count.
build_verdict() { # SPEED GOAL HITS RULES
  local v
  v=$(verdict "$1" ">=" "$2")
  if [ "$v" = MISSED ]; then
    echo MISSED
  elif [ "$v" = missing ] || ! [[ ${3:-} =~ ^[0-9]+$ ]]; then
    echo missing
  elif [ "$3" -lt "$4" ]; then
    echo MISSED
  else
    echo met
  fi
}

# Mounts a fresh journaled ext4 on the empty directory DIR (a sparse image file, gone once DIR
# is unmounted: fresh_fs_end), so that every run starts from the same filesystem state. Why: an
# ext4 without a journal (the root of the machine these benchmarks were first run on) skips, at
# every inode it allocates, the inodes freed in the last minute or more (the kernel's
# `recently_deleted`), so a round that followed another's `rm -rf` of a few thousand files ran up
# to 2x slower, whatever it measured. Needs root and mkfs.ext4; otherwise, or with
# BENCH_FRESH_FS=0, DIR is used as it is, and that is said.
fresh_fs() { # DIR
  local dir=$1 image=$1.img
  if [ "$(id -u)" != 0 ] || ! command -v mkfs.ext4 >/dev/null || [ "${BENCH_FRESH_FS:-1}" = 0 ]; then
    echo "bench: working in $dir on the filesystem it is on (a fresh ext4 needs root and mkfs.ext4)" >&2
    return 0
  fi
  local device
  # Direct I/O to the image: otherwise the loop device copies every block written through the
  # page cache of the filesystem under it, CPU time (13 % of a cold build's samples) that no real
  # disk costs. A machine without loop devices (some containers) works where it is.
  if ! truncate -s "${BENCH_FS_SIZE:-32G}" "$image" ||
    ! mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$image" ||
    ! device=$(losetup --find --show --direct-io=on "$image" 2>/dev/null); then
    rm -f -- "$image"
    echo "bench: no loop device for a fresh ext4: working in $dir on the filesystem it is on" >&2
    return 0
  fi
  rm -f -- "$image" # the loop device holds it until it is detached
  if ! mount "$device" "$dir"; then
    losetup -d "$device"
    echo "bench: cannot mount a fresh ext4: working in $dir on the filesystem it is on" >&2
    return 0
  fi
  echo "bench: working in a fresh journaled ext4 at $dir ($device)" >&2
}
# Unmounts what fresh_fs mounted on DIR, if it did, and frees its device.
fresh_fs_end() { # DIR
  local device
  mountpoint -q "$1" || return 0
  device=$(findmnt -n -o SOURCE --target "$1")
  umount "$1" 2>/dev/null || umount -l "$1"
  case $device in /dev/loop*) losetup -d "$device" 2>/dev/null || true ;; esac
}

# The CPU time (user + system, in clock ticks) used so far by the processes PIDS, all their
# threads included (also those that have exited).
cpu_ticks() {
  local pid total=0 f
  for pid in "$@"; do
    read -r -a f <"/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}

# The machine in a few words: its CPUs, and how its idle CPUs wake up. On a virtual machine whose
# idle CPUs halt at once (the `haltpoll` cpuidle driver with guest_halt_poll_ns 0), waking a
# thread on an idle CPU costs a wake-up by the host, and each FUSE request the asking program
# waits on pays it: a warm Dune 2.9 build, which waits on a SETATTR per artifact, was 1.38x
# Dune's copy mode here that way and 1.10x with 200 us of guest halt polling
# (docs/performance.md, "Where a warm request's time goes"). So the setting is printed beside
# the figures.
machine_text() {
  local idle='' poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
  idle=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || true)
  if [ -r "$poll" ]; then idle+=", guest halt polling $(cat "$poll") ns"; fi
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))${idle:+, idle CPUs: $idle}"
}
