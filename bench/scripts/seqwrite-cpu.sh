#!/bin/bash
# A/B helper for write-path changes: a fresh daemon (three 4 GiB storage
# systems, a 4 GiB volume), fio sequential 1 MiB writes at queue depth 4 for
# SECS seconds (default 10), then MB/s and the daemon's CPU seconds (whole
# process, and its JavaScript thread) per GiB written. Run it alternately
# with the builds being compared; the machine is noisy, so compare runs.
#   bash bench/scripts/seqwrite-cpu.sh      (as root, after make setup)
#   PERF=1 KEEP=1 ...                       perf record the daemon, keep the dir
#   FSYNC=64                                an fsync every 64 writes, with its latency
#   RW=randwrite BS=4k IODEPTH=16           another fio job (default: write, 1M, 4)
set -e
SECS=${SECS:-10}
. "$(dirname "$0")/fresh-daemon.sh"
PID=$DP
snap > $D/before
if [ -n "$PERF" ]; then perf record -F 999 -g -p $PID -o $D/perf.data -- sleep $SECS 2>/dev/null & fi
fio --name=sw --filename=$D/mnt/v --rw=${RW:-write} --bs=${BS:-1M} --ioengine=libaio --iodepth=${IODEPTH:-4} --direct=1 --size=1G --offset=0 --time_based=1 --runtime=$SECS --allow_file_create=0 --fallocate=none ${FSYNC:+--fsync=$FSYNC} --output-format=json --output=$D/fio.json >/dev/null
snap > $D/after
wait %2 2>/dev/null || true
python3 - $D <<'PY'
import json,sys
d=sys.argv[1]
job=json.load(open(d+'/fio.json'))['jobs'][0]
j=job['write'] if job['write']['io_bytes'] else job['read']
b=dict(l.split() for l in open(d+'/before')); a=dict(l.split() for l in open(d+'/after'))
tot=0; parts=[]
for k in ('main', 'process'):
    v=(int(a[k])-int(b.get(k,0)))/100
    if k=='process': tot=v
    parts.append('%s %.1f'%(k,v))
gb=j['io_bytes']/2**30
print('MB/s %.0f  CPU-s %.1f (%s)  %.2f CPU-s/GiB' % (j['bw_bytes']/1e6, tot, ', '.join(parts), tot/gb))
sync=job.get('sync', {}).get('lat_ns', {})
if sync.get('N'):
    pc=sync.get('percentile', {})
    print('fsync: %d, mean %.1f ms, p50 %.1f ms, p99 %.1f ms, max %.1f ms' % (sync['N'], sync['mean']/1e6, pc.get('50.000000', 0)/1e6, pc.get('99.000000', 0)/1e6, sync['max']/1e6))
PY
grep -q '"error" : [1-9]' $D/fio.json && { echo "fio saw errors; the daemon's log:"; tail -5 $D/log; }
exit 0
