#!/bin/bash
# A/B helper for read-after-write: a fresh daemon (three 4 GiB storage
# systems, a 4 GiB volume); 1 GiB written sequentially, 4 s of random 4 KiB
# writes, then SECS seconds (default 8) of random 4 KiB reads at queue depth
# 16 with nothing read before: what reads cost when the data was just
# written (the page cache holds none of it since tables are written with
# O_DIRECT).   bash bench/scripts/randread-after-write.sh   (as root)
set -e
SECS=${SECS:-8}
. "$(dirname "$0")/fresh-daemon.sh"
fio --name=w --filename=$D/mnt/v --rw=write --bs=1M --ioengine=libaio --iodepth=4 --direct=1 --size=1G --offset=0 --allow_file_create=0 --fallocate=none --output-format=json --output=$D/w.json >/dev/null
fio --name=w --filename=$D/mnt/v --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --size=1G --offset=0 --time_based=1 --runtime=4 --allow_file_create=0 --fallocate=none --output-format=json --output=$D/rw.json >/dev/null
fio --name=r --filename=$D/mnt/v --rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --size=1G --offset=0 --time_based=1 --runtime=$SECS --allow_file_create=0 --fallocate=none --output-format=json --output=$D/r.json >/dev/null
python3 -c "import json;j=json.load(open('$D/r.json'))['jobs'][0]['read'];print('randread IOPS %.0f p99 %.2f ms'%(j['iops'],j['clat_ns']['percentile']['99.000000']/1e6))"
