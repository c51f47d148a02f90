/**
 * The garbage collector's settings for a long-running vvfs process (the
 * daemon, a storage server), applied once at its start: the old
 * generation's growth (below), and for the daemon a small young
 * generation (SEMI_SPACE_MB, a flag node reads only at its start).
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
 * Only while the daemon replicates (adaptHeapGrowth); otherwise
 * HEAP_GROWING_PERCENT_LOCAL, for memory. Storage servers keep 3×.
 *
 * V8 reads this flag each time it sets the limit, so setting it after start
 * works. A value given on node's own command line wins (bench comparisons:
 * BENCH_NODE_FLAGS).
 */
import { setFlagsFromString } from 'node:v8'

/** The old generation may grow to (1 + this/100)× what the last mark-compact kept. */
export const HEAP_GROWING_PERCENT = 200
/**
 * A daemon that does not replicate: 2×. The 3× costs up to ~40 MiB of
 * heap, and a non-replicating daemon's peak RSS in `make bench` is bound by
 * issue 17's 384 MiB. Full runs, 2026-12-05, all with the arena limit from
 * process start: 367.0, 395.6 and 407.4 MiB with this against 393.2 and
 * 401.3 with 3× — not shown lower at the peak, which swings ±20 MiB from
 * run to run; V8's heap at the end of the bench 73 MiB against 81–90. No
 * cost seen: `BENCH_ONLY=migration` idle copy 128 and 132 MB/s (94 and 99
 * with 3× earlier that day), CPU-s per GiB of sequential writes 3.85–4.63
 * against 3.84–5.32 (docs/performance.md, Memory).
 */
export const HEAP_GROWING_PERCENT_LOCAL = 100
/** How often adaptHeapGrowth looks at whether the daemon replicates. */
const ADAPT_MS = 2_000

/**
 * The daemon's young generation: each of its two semi-spaces at most this
 * many MiB (node's default on 64-bit: 16). Under 4 KiB random writes V8
 * grew them to the full 16 — 32 MiB of heap for objects that live one
 * request — and the heap to 71–75 MiB in all at the bench's peak. With 4:
 * at most 49 MiB, and the full bench's peak RSS 367.7 against 392.7 MiB
 * the same day (one run each, 2026-12-05, docs/performance.md, Memory). No
 * cost seen there: three alternating pairs of `bench/scripts/seqwrite-cpu.sh`,
 * CPU-s per GiB 4.27/3.68/4.20 against 4.34/3.86/4.43 (1 MiB sequential),
 * 92/77/79 against 103/77/79 (4 KiB random, queue depth 16).
 * Replication pays for it: end to end, 1 MiB sequential
 * (`BENCH_ONLY=writes BENCH_JOBS=seqwrite bench/replication.js`, two
 * alternating pairs) 165 and 137 MB/s at 9.7 and 11.8 primary CPU-s per GiB
 * against 169 and 168 MB/s at 9.3 and 9.0 with 16. So a daemon started for
 * replication peers (`--listen` or `--peer-key`) keeps node's default; a
 * primary started without either (its key given to `replicate start`)
 * replicates with the small one (docs/limits.md).
 * node reads it only at its start: the daemon passes startFlags() to its
 * restart (process-start.ts). Storage servers keep node's default.
 */
export const SEMI_SPACE_MB = 4

/**
 * The flags node must be started with for the daemon (its young
 * generation, unless `forReplication`), minus any the operator gave
 * (NODE_OPTIONS or node's command line).
 */
export function startFlags(forReplication: boolean, execArgv: string[] = process.execArgv, nodeOptions: string = process.env.NODE_OPTIONS ?? ''): string[] {
  if (forReplication || nodeWasGiven('max-semi-space-size', [...execArgv, ...nodeOptions.split(/\s+/)])) return []
  return [`--max-semi-space-size=${SEMI_SPACE_MB}`]
}

/** Whether `flags` hold V8's flag `name` (as --a-b or --a_b, with or without a value). */
function nodeWasGiven(name: string, flags: string[]): boolean {
  const spellings = [`--${name}`, `--${name.replaceAll('-', '_')}`]
  return flags.some((a) => spellings.some((s) => a.startsWith(s)))
}

function givenOnCommandLine(): boolean {
  return nodeWasGiven('heap-growing-percent', process.execArgv)
}

export function tuneGarbageCollector(): void {
  if (givenOnCommandLine()) return
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`)
}

/**
 * The daemon's heap growth follows what it does: HEAP_GROWING_PERCENT while
 * `replicating()` (a pair in either role), HEAP_GROWING_PERCENT_LOCAL
 * otherwise — set now, then looked at every ADAPT_MS and set again only when
 * it changes. Returns the function that stops it. A value on node's command
 * line wins.
 */
export function adaptHeapGrowth(replicating: () => boolean, setFlags: (flags: string) => void = setFlagsFromString): () => void {
  if (givenOnCommandLine()) return () => {}
  let set: number | null = null
  const adapt = () => {
    const percent = replicating() ? HEAP_GROWING_PERCENT : HEAP_GROWING_PERCENT_LOCAL
    if (percent === set) return
    setFlags(`--heap-growing-percent=${percent}`)
    set = percent
  }
  adapt()
  const timer = setInterval(adapt, ADAPT_MS)
  timer.unref()
  return () => clearInterval(timer)
}
