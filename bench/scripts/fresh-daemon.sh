# Sourced by the A/B helpers here: starts a vvfs daemon on a new state
# directory $D (three 4 GiB storage systems, a 4 GiB volume `v` at
# $D/mnt/v), sets DP to its pid, and on exit stops it, drops its mount and
# removes $D (kept with KEEP=1). NODEOPTS goes to the daemon's NODE_OPTIONS,
# DAEMONOPTS to its command line. `snap` prints the daemon's CPU ticks
# (whole process, its JavaScript thread) and the bytes it has read from the
# disk, as `key value` lines, for a before/after difference.
D=$(mktemp -d /var/tmp/vvfs-ab.XXXX)
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
NODE_OPTIONS="$NODEOPTS" node bin/vvfs daemon --state $D/state --mount $D/mnt --log-level warn $DAEMONOPTS > $D/log 2>&1 &
DP=$!
cleanup() { set +e; kill $DP 2>/dev/null && wait $DP 2>/dev/null; fusermount -uz $D/mnt 2>/dev/null; if [ -n "$KEEP" ]; then echo "kept $D"; else rm -rf $D; fi; }
trap cleanup EXIT
for i in $(seq 100); do [ -S $D/state/control.sock ] && node bin/vvfs status --socket $D/state/control.sock >/dev/null 2>&1 && break; sleep 0.2; done
for s in s1 s2 s3; do node bin/vvfs storage add $s --capacity 4G --socket $D/state/control.sock >/dev/null; done
node bin/vvfs volume create v --size 4G --socket $D/state/control.sock >/dev/null
snap() {
  echo "process $(awk '{print $14+$15}' /proc/$DP/stat)"
  echo "main $(awk '{print $14+$15}' /proc/$DP/task/$DP/stat)"
  echo "disk $(awk '/^read_bytes/ {print $2}' /proc/$DP/io)"
}
