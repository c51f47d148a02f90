/**
 * The garbage collector's settings for a long-running vvfs process (the
 * daemon, a storage server), applied once at its start.
 *
 * Why: V8 starts a full mark-compact whenever the old generation's room
 * before its limit is less than the young generation's capacity (16 MiB).
 * The daemon's live heap is ~20 MiB and V8 sets the limit ~1.6× above it, so
 * under a stream of short-lived buffers and promises (replicating 1 MiB
 * sequential writes) each mark-compact left too little room and the next
 * began at once: one every 50–100 ms on both daemons, mutator utilisation
 * 0.75–0.9, 23 % of the primary's CPU and 35 % of the secondary's (perf and
 * --trace-gc --trace-incremental-marking, bench/replication.ts end to end,
 * 2026-12-05). With the heap allowed 3× what a mark-compact keeps (200 %), the same
 * run had 23 mark-compacts on the primary instead of ~230, CPU-seconds per
 * GiB replicated went from 9.7 to 7.2 (primary) and from 9.0 to 5.0
 * (secondary), and the end-to-end rate from 155 to 198 MB/s; 100 % was not
 * enough (9.5 and 7.6, a mark-compact every ~150 ms). The cost: up to ~40 MiB
 * more heap before a collection.
 *
 * V8 reads this flag each time it sets the limit, so setting it after start
 * works. A value given on node's own command line wins (bench comparisons:
 * BENCH_NODE_FLAGS).
 */
import { setFlagsFromString } from 'node:v8'

/** The old generation may grow to (1 + this/100)× what the last mark-compact kept. */
export const HEAP_GROWING_PERCENT = 200

export function tuneGarbageCollector(): void {
  if (process.execArgv.some((a) => a.startsWith('--heap-growing-percent') || a.startsWith('--heap_growing_percent'))) return
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`)
}
