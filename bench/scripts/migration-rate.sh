#!/bin/bash
# A/B helper for the migration copy path (issue 17, target 4): a fresh
# daemon (three 4 GiB storage systems, a 4 GiB volume), fio writes SIZE
# (default 1G) of random data sequentially (1 MiB, queue depth 4: the bench's
# sequential write), then the volume is migrated onto one system while idle.
# Prints the fill's MB/s, the copy's MB/s (job bytes / job time, as
# bench/migration.ts), their ratio and the daemon's CPU seconds per GiB
# copied. Both rates come from the same daemon minutes apart: compare the
# ratio, and run the builds being compared alternately (the machine is noisy).
#   bash bench/scripts/migration-rate.sh     (as root, after make setup)
#   SIZE=512M MODE=memory KEEP=1 PERF=1 ...  perf record the daemon during the copy
set -e
SIZE=${SIZE:-1G}
. "$(dirname "$0")/fresh-daemon.sh"
PID=$DP
S="--socket $D/state/control.sock"
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
fio --name=fill --filename=$D/mnt/v --rw=write --bs=1M --ioengine=libaio --iodepth=4 --direct=1 --size=$SIZE --allow_file_create=0 --fallocate=none --refill_buffers=1 --output-format=json --output=$D/fill.json >/dev/null
# The destination: the system holding least of the volume (as the bench).
TO=$(node bin/vvfs volume show v --json $S | python3 -c 'import json,sys; s={x["storage"]:x["allocated"] for x in json.load(sys.stdin)["allocatedBySystem"]}; print(min(["s1","s2","s3"], key=lambda n: s.get(n,0)))')
c0=$(cpu)
if [ -n "$PERF" ]; then perf record -F 999 -g -p $PID -o $D/perf.data 2>/dev/null & PP=$!; fi
ID=$(node bin/vvfs migrate v --to $TO ${MODE:+--mode $MODE} --json $S | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
while :; do
  node bin/vvfs job show $ID --json $S > $D/job.json
  python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["status"]=="concluded" else 1)' $D/job.json && break
  sleep 0.2
done
c1=$(cpu)
if [ -n "$PERF" ]; then kill -INT $PP; wait $PP 2>/dev/null || true; fi
python3 - $D $c0 $c1 <<'PY'
import json,sys
from datetime import datetime
d,c0,c1=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])
fill=json.load(open(d+'/fill.json'))['jobs'][0]['write']['bw_bytes']/1e6
j=json.load(open(d+'/job.json'))
if j.get('result')!='completed': sys.exit('job %s: %s' % (j.get('result'), j.get('error')))
t=lambda s: datetime.fromisoformat(s.replace('Z','+00:00')).timestamp()
secs=t(j['finishedAt'])-t(j['startedAt'])
rate=j['progress']['total']/1e6/secs
print('fill %.0f MB/s  copy %.0f MB/s (%.0f MiB in %.1f s)  ratio %.2f  %.2f CPU-s/GiB copied' % (fill, rate, j['progress']['total']/2**20, secs, rate/fill, (c1-c0)/100/(j['progress']['total']/2**30)))
PY
