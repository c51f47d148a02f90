#!/bin/bash
# A/B helper for read-after-write: a fresh daemon (three 4 GiB storage
# systems, a 4 GiB volume); 1 GiB written sequentially, 4 s of random 4 KiB
# writes, then SECS seconds (default 8) of random 4 KiB reads at queue depth
# 16 with nothing read before: what reads cost when the data was just
# written (the page cache holds none of it since tables are written with
# O_DIRECT).   bash bench/scripts/randread-after-write.sh   (as root)
set -e
SECS=${SECS:-8}
D=$(mktemp -d /var/tmp/vvfs-rr.XXXX)
cd "$(dirname "$0")/../.."
node bin/vvfs daemon --state $D/state --mount $D/mnt --log-level warn > $D/log 2>&1 &
DP=$!
# Whatever happens: stop the daemon, drop its mount, keep the dir only if asked.
cleanup() { set +e; kill $DP 2>/dev/null && wait $DP 2>/dev/null; fusermount -uz $D/mnt 2>/dev/null; if [ -n "$KEEP" ]; then echo "kept $D"; else rm -rf $D; fi; }
trap cleanup EXIT
for i in $(seq 100); do [ -S $D/state/control.sock ] && node bin/vvfs status --socket $D/state/control.sock >/dev/null 2>&1 && break; sleep 0.2; done
for s in s1 s2 s3; do node bin/vvfs storage add $s --capacity 4G --socket $D/state/control.sock >/dev/null; done
node bin/vvfs volume create v --size 4G --socket $D/state/control.sock >/dev/null
fio --name=w --filename=$D/mnt/v --rw=write --bs=1M --ioengine=libaio --iodepth=4 --direct=1 --size=1G --offset=0 --allow_file_create=0 --fallocate=none --output-format=json --output=$D/w.json >/dev/null
fio --name=w --filename=$D/mnt/v --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --size=1G --offset=0 --time_based=1 --runtime=4 --allow_file_create=0 --fallocate=none --output-format=json --output=$D/rw.json >/dev/null
fio --name=r --filename=$D/mnt/v --rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --size=1G --offset=0 --time_based=1 --runtime=$SECS --allow_file_create=0 --fallocate=none --output-format=json --output=$D/r.json >/dev/null
python3 -c "import json;j=json.load(open('$D/r.json'))['jobs'][0]['read'];print('randread IOPS %.0f p99 %.2f ms'%(j['iops'],j['clat_ns']['percentile']['99.000000']/1e6))"
