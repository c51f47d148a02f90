#!/bin/bash
# What bounds ext4 on a loop device: dd 256 MiB conv=fsync into ext4 on a
# loop-attached vvfs volume and on a file in RAM served over libfuse 3 (C,
# bench/scripts/fuse3-ramfile.c, with and without the kernel's writeback
# cache), each with the loop device buffered and with --direct-io=on.
# ROUNDS (default 2) alternating rounds. Needs root and libfuse3-dev.
set -e
ROUNDS=${ROUNDS:-2}
. "$(dirname "$0")/fresh-daemon.sh"
S="--socket $D/state/control.sock"
gcc -O2 -Wall -o $D/ramfile bench/scripts/fuse3-ramfile.c $(pkg-config --cflags --libs fuse3)
head -c 256M /dev/urandom > $D/src
mkdir -p $D/m $D/r3
dd_into() { # FILE DIO LABEL
  local dev; dev=$(losetup --find --show --direct-io=$2 $1)
  mkfs.ext4 -q $dev && mount $dev $D/m
  local t0 t1; t0=$(date +%s.%N); dd if=$D/src of=$D/m/f bs=1M conv=fsync status=none; t1=$(date +%s.%N)
  echo "$3, loop direct-io=$2: $(python3 -c "print(round(256*1.048576/($t1-$t0)))") MB/s"
  umount $D/m; losetup -d $dev
}
for round in $(seq $ROUNDS); do
  for dio in off on; do
    node bin/vvfs volume create e$dio$round --size 4G $S >/dev/null
    dd_into $D/mnt/e$dio$round $dio "vvfs volume"
    for wb in 0 1; do
      WB=$wb $D/ramfile $D/r3; sleep 0.3
      dd_into $D/r3/f $dio "libfuse 3 RAM file, writeback cache $wb"
      umount $D/r3
    done
  done
done
