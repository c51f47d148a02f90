#!/bin/bash
# A/B helper for space during overwrites (issue 17, target 5: never more than
# 2.0 bytes on disk per logical byte during the fio jobs): a fresh daemon
# (three 4 GiB storage systems, a 4 GiB volume), fio 1 MiB sequential writes
# over the first 1 GiB for SECS seconds (default 10: the bench's job length,
# so about three passes over it), then 4 KiB random writes (qd16) over it for
# SECS. du of the storage directories is sampled every half second; prints
# each job's rate, the highest du per allocated byte during the jobs and the
# ratio right after them, and what the stores held at that peak: bytes and
# count of table files (.ldb) and bytes of logs (.log) per store, and the
# largest level-0 merge each store's LevelDB LOG records (issue 17: why).
#   bash bench/scripts/space-overwrite.sh      (as root, after make setup)
#   DAEMONOPTS='--compact-idle 0' ...          extra daemon flags
set -e
SECS=${SECS:-10}
. "$(dirname "$0")/fresh-daemon.sh"
S="--socket $D/state/control.sock"
allocated() { node bin/vvfs volume show v --json $S | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated"])'; }
sample() {
  local total=0 parts=""
  for s in $D/state/storage/*/; do
    read -r ldb n log other < <(find $s -maxdepth 1 -type f -printf '%f %b\n' 2>/dev/null | awk '{b=$2*512; if ($1 ~ /\.ldb$/) {l+=b; n++} else if ($1 ~ /\.log$/) g+=b; else o+=b} END {print l+0, n+0, g+0, o+0}')
    total=$((total + ldb + log + other))
    parts="$parts $(basename $s): tables $((ldb >> 20)) MiB in $n, logs $((log >> 20)) MiB;"
  done
  echo "$total$parts"
}
( while :; do sample >> $D/du.txt; sleep 0.5; done ) & SAMPLER=$!
job() { fio --name=$1 --filename=$D/mnt/v --rw=$1 --bs=$2 --ioengine=libaio --iodepth=$3 --direct=1 --size=1G --offset=0 --time_based=1 --runtime=$SECS --allow_file_create=0 --fallocate=none --refill_buffers=1 --randrepeat=0 --output-format=json --output=$D/$1.json >/dev/null; }
base=$(du -s -B1 $D/state/storage | cut -f1)
job write 1M 4
job randwrite 4k 16
kill $SAMPLER; wait $SAMPLER 2>/dev/null || true
after=$(du -s -B1 $D/state/storage | cut -f1)
python3 - $D $base $after $(allocated) <<'PY'
import json,sys
d,base,after,alloc=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4])
rates=[]
for j in ('write','randwrite'):
    w=json.load(open('%s/%s.json'%(d,j)))['jobs'][0]['write']
    rates.append('%s %.0f MB/s %.0f IOPS'%(j,w['bw_bytes']/1e6,w['iops']))
samples=[l.split(None,1) for l in open(d+'/du.txt') if l.strip()]
peak,at=max(((int(t), rest.strip()) for t, rest in samples), key=lambda x: x[0])
print('%s; allocated %.0f MiB; du per allocated byte: peak %.2f, right after %.2f' % ('; '.join(rates), alloc/2**20, (peak-base)/alloc, (after-base)/alloc))
print('at the peak:', at)
PY
for s in $D/state/storage/*/; do echo "$(basename $s): largest level-0 merge: $(cat $s/LOG* 2>/dev/null | grep -o 'Compacting [0-9]*@0' | awk '{split($2, a, "@"); if (a[1] > m) m = a[1]} END {print m + 0}') tables"; done
