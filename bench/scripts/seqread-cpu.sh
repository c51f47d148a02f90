#!/bin/bash
# A/B helper for read-path changes: a fresh daemon (three 4 GiB storage
# systems, a 4 GiB volume), the first GiB written once with 1 MiB writes and
# fsynced, then fio sequential 1 MiB reads at queue depth 4 for SECS seconds
# (default 10), as `make bench` reads after its writes. Prints MB/s, the
# daemon's CPU seconds per GiB read, and how much of it came from the disk
# (the daemon's read_bytes: LevelDB writes its tables with O_DIRECT, so what
# is not in a memtable or its block cache is read from the disk). Random
# reads after writes: randread-after-write.sh.
#   bash bench/scripts/seqread-cpu.sh       (as root, after make setup)
#   PERF=1 KEEP=1 ...                       perf record the daemon, keep the dir
#   WRITE_SECS=10                           write for 10 s first (overwriting, as make bench's seqwrite
#                                           job does just before its seqread), no fsync
set -e
SECS=${SECS:-10}
. "$(dirname "$0")/fresh-daemon.sh"
PID=$DP
# The fill: once and fsynced, or overwriting for WRITE_SECS.
if [ -n "$WRITE_SECS" ]; then FILL="--time_based=1 --runtime=$WRITE_SECS"; else FILL="--end_fsync=1"; fi
fio --name=fill --filename=$D/mnt/v --rw=write --bs=1M --ioengine=libaio --iodepth=4 --direct=1 --size=1G --offset=0 $FILL --allow_file_create=0 --fallocate=none >/dev/null
snap > $D/before
if [ -n "$PERF" ]; then perf record -F 999 -g -p $PID -o $D/perf.data -- sleep $SECS 2>/dev/null & fi
fio --name=sr --filename=$D/mnt/v --rw=read --bs=1M --ioengine=libaio --iodepth=4 --direct=1 --size=1G --offset=0 --time_based=1 --runtime=$SECS --allow_file_create=0 --output-format=json --output=$D/fio.json >/dev/null
snap > $D/after
wait %2 2>/dev/null || true
python3 - $D <<'PY'
import json,sys
d=sys.argv[1]
j=json.load(open(d+'/fio.json'))['jobs'][0]['read']
b=dict(l.split() for l in open(d+'/before')); a=dict(l.split() for l in open(d+'/after'))
cpu=(int(a['process'])-int(b['process']))/100; main=(int(a['main'])-int(b['main']))/100
disk=(int(a['disk'])-int(b['disk']))
gb=j['io_bytes']/2**30
print('MB/s %.0f  IOPS %.0f  CPU-s %.1f (main %.1f)  %.2f CPU-s/GiB  from disk %.0f%% of what was read' % (j['bw_bytes']/1e6, j['iops'], cpu, main, cpu/gb, 100*disk/j['io_bytes']))
PY
exit 0
