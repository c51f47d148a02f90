/**
 * glibc's allocator settings for a long-running vvfs process (the daemon, a
 * storage server), applied once at its start, beside the garbage
 * collector's (gc-tuning.ts). The native part is native/malloc.
 *
 * Why: most of the daemon's memory outside V8's heap is LevelDB's — its
 * memtables, block caches and the values it copies — and the buffers of the
 * FUSE threads. All of it is malloc'd by whichever thread runs the
 * operation: the libuv pool, LevelDB's compaction thread, libfuse's
 * workers. glibc gives each thread its own arena, up to 8 per core, and an
 * arena keeps what was freed in it for its own thread's next allocation. So
 * a memtable filled on one pool thread and freed on another stayed
 * resident in the first. Peak RSS grew with the number of threads that had
 * ever written, well past the memory budget (memory-budget.ts). In
 * `BENCH_ONLY=migration make bench` (2 GiB written, then migrated), peak
 * RSS was 343–382 MiB with glibc's default (three runs) and 316–344 MiB
 * with at most MAX_ARENAS new arenas (five runs), the idle copy no slower
 * (107–127 MB/s against 101–127); a full `make bench` peaked at 423 MiB
 * against 426–451 (2026-12-05, docs/performance.md).
 *
 * Not done: a periodic malloc_trim(0). It gave back ~100 MiB of an idle
 * daemon, but took 13–230 ms per call with the arenas locked, every thread
 * that allocates waiting meanwhile.
 *
 * Concurrency: the limit acts on threads that start after it (the libuv
 * pool starts at the first file or LevelDB operation, FUSE's threads at
 * mount), so it runs before the daemon opens anything; threads V8 started
 * before it keep the arenas they made (malloc_info showed five).
 */
import { loadNativeAddon } from './native-addon.js'

/** At most this many malloc arenas: the main one and one the other threads share. */
export const MAX_ARENAS = 2

interface MallocAddon {
  limitArenas(n: number): boolean
}

export function tuneMalloc(): void {
  loadNativeAddon<MallocAddon>('malloc', "the allocator's settings").limitArenas(MAX_ARENAS)
}

