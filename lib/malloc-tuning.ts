/**
 * glibc's allocator settings and housekeeping for a long-running vvfs
 * process (the daemon, a storage server), applied at its start, beside the
 * garbage collector's (gc-tuning.ts). The native part is native/malloc.
 *
 * Why: most of the daemon's memory outside V8's heap is malloc'd by
 * whichever thread runs the operation — LevelDB's memtables, caches and
 * batches on the libuv pool and its compaction thread, FUSE's buffers on
 * libfuse's workers, buffers on the JS thread — and glibc gives each thread
 * its own arena, up to 8 per core, each keeping what was freed in it for
 * its own next allocations. At the peak of a full `make bench` (the
 * migration section, malloc_info through gdb) malloc held 269 MiB over six
 * arenas, 108 MiB of it free; the stores' memtables and caches (status:
 * memory.held) were ~80 MiB of the rest.
 *
 * So, three things (figures: docs/performance.md, "Memory", 2026-12-05):
 *  - reexecTuned: the process starts itself again, once, in its
 *    own place with MALLOC_ARENA_MAX=MAX_ARENAS, which glibc reads only at
 *    process start (mallopt later leaves the arenas V8's threads made
 *    before it: six), and with the node flags node reads only at its
 *    start (the daemon's young generation: gc-tuning.ts startFlags).
 *    Full `make bench`, peak RSS by the end of the fio
 *    jobs: 276–308 MiB in six runs with the limit from the start, against
 *    323–344 in four without; the whole run's peak, set in the migration
 *    section, not measurably (363–407 in six runs against 384–431 in
 *    four).
 *    One arena made every fio job slower (sequential reads 0.14 × the
 *    ceiling against 0.33); jemalloc (LD_PRELOAD) peaked at 497 MiB.
 *  - tuneMalloc: the same limit by mallopt, for threads that start later,
 *    if the process could not be started again.
 *  - trimWhenIdle: malloc_trim(0), on a pool thread, once the process has
 *    been idle IDLE_MS after work: the bench's daemon went from 280 to
 *    168 MiB after its fio jobs. Not under load: every 2 s it took
 *    13–230 ms per call with the arenas locked, every allocating thread
 *    waiting meanwhile.
 *
 * Concurrency: the re-execution runs first thing, before the process opens,
 * logs or listens (what it held is gone after it); it keeps the pid, name,
 * arguments (node flags added before the script), environment (the limit
 * and a marker added) and standard streams. A trim runs on a pool
 * thread and locks one arena at a time while it walks it: a thread that
 * allocates from that arena meanwhile waits (the JS thread, for the main
 * one), which is why it runs only when the process is idle.
 */
import type { Logger } from './log.js'
import { loadNativeAddon } from './native-addon.js'

/** At most this many malloc arenas: the main one and one the other threads share. */
export const MAX_ARENAS = 2

/** Idle means under this share of one core's CPU (the bench's daemon between its jobs: 0.3 % over 10 s). */
export const IDLE_CPU = 0.05
/** Trim once the process has been idle this long after work (chosen, not measured: longer than a pause between a script's commands). */
export const IDLE_MS = 3_000
/** At most one trim per this long, however often work and idleness alternate. */
export const MIN_TRIM_GAP_MS = 30_000
/** How often the process's CPU is looked at. */
const CHECK_MS = 1_000

interface MallocAddon {
  limitArenas(n: number): boolean
  trim(): Promise<boolean>
  reexec(nodeFlags?: string[]): never
}

function addon(): MallocAddon {
  return loadNativeAddon<MallocAddon>('malloc', "the allocator's settings")
}

/** What glibc reads from the environment at process start only: the arena limit. */
export const ALLOCATOR_ENV = 'MALLOC_ARENA_MAX'
/** Set for the new image: a process that finds it never starts itself again (whatever became of ALLOCATOR_ENV). */
const REEXECUTED_ENV = 'VVFS_REEXECUTED'

/**
 * Starts this process again in its place (same pid, name and arguments, but for nodeFlags)
 * with ALLOCATOR_ENV=MAX_ARENAS in its environment, so that every thread
 * shares MAX_ARENAS arenas from the first one on, and `nodeFlags` (what
 * node reads only at its start: gc-tuning.ts startFlags) before its script.
 * An ALLOCATOR_ENV already set — by the operator: theirs is kept (e.g. 16,
 * glibc's own limit on two cores, for a before/after) — is left as it is,
 * and with no flags to add nothing is re-executed. Never runs twice (a
 * marker in the environment). Call first thing in a daemon's or storage
 * server's start, before it opens, logs or listens: what the process held
 * is gone after it. Returns only if it did not re-execute: 'kept' (nothing
 * to do) or why it could not (then tuneMalloc limits the arenas of the
 * threads to come, and the flags are not in force).
 */
export function reexecTuned(nodeFlags: string[] = []): 'kept' | { failed: string } {
  if (process.env[REEXECUTED_ENV] !== undefined) return 'kept'
  const setArenas = process.env[ALLOCATOR_ENV] === undefined
  if (!setArenas && nodeFlags.length === 0) return 'kept'
  if (setArenas) process.env[ALLOCATOR_ENV] = String(MAX_ARENAS)
  process.env[REEXECUTED_ENV] = '1'
  try {
    addon().reexec(nodeFlags)
  } catch (err) {
    if (setArenas) delete process.env[ALLOCATOR_ENV]
    delete process.env[REEXECUTED_ENV]
    return { failed: (err as Error).message }
  }
  return { failed: 'reexec returned' } // not reached: it returns only by throwing
}

/** The arena limit by mallopt(3), for threads started from now on: when the process could not be started again with it. */
export function tuneMalloc(): void {
  addon().limitArenas(MAX_ARENAS)
}

/** Gives the memory malloc holds free back to the system (malloc_trim(0) on a pool thread); true if any was. */
export function trimMalloc(): Promise<boolean> {
  return addon().trim()
}

/**
 * When to trim: after a period with work in it (CPU at or over IDLE_CPU in
 * some second) followed by IDLE_MS without, and not within MIN_TRIM_GAP_MS
 * of the last trim. An always-idle process is never trimmed (it freed
 * nothing since), a steadily busy one neither (a trim would stall it).
 */
export class IdleTrimPolicy {
  private workSinceTrim = false
  private idleSince: number
  private lastTrim = -Infinity

  constructor(now: number) {
    this.idleSince = now
  }

  /** `cpuMs` of CPU were used over the `ms` before `now`; true if a trim should start now. */
  observe(now: number, cpuMs: number, ms: number): boolean {
    if (cpuMs >= IDLE_CPU * ms) {
      this.workSinceTrim = true
      this.idleSince = now
      return false
    }
    return this.workSinceTrim && now - this.idleSince >= IDLE_MS && now - this.lastTrim >= MIN_TRIM_GAP_MS
  }

  /** A trim started at `now` (its own CPU is not work: the caller skips the seconds it runs). */
  trimmed(now: number): void {
    this.workSinceTrim = false
    this.lastTrim = now
  }
}

/**
 * Watches the process's CPU (every thread's: process.cpuUsage) and trims
 * malloc when IdleTrimPolicy says so; logs each trim at debug with what it
 * gave back. Returns the function that stops it. A failed trim is logged
 * and changes nothing else.
 */
export function trimWhenIdle(log: Logger, trim: () => Promise<boolean> = trimMalloc): () => void {
  const cpuMs = () => {
    const u = process.cpuUsage()
    return (u.user + u.system) / 1000
  }
  const clock = () => performance.now()
  const policy = new IdleTrimPolicy(clock())
  let last = { at: clock(), cpu: cpuMs() }
  let trimming = false
  const timer = setInterval(() => {
    if (trimming) return
    const now = { at: clock(), cpu: cpuMs() }
    const due = policy.observe(now.at, now.cpu - last.cpu, now.at - last.at)
    last = now
    if (!due) return
    policy.trimmed(now.at)
    trimming = true
    const before = process.memoryUsage.rss()
    // A trim that throws at once (the addon) fails like one that rejects: logged, nothing else.
    Promise.resolve()
      .then(trim)
      .then(
        (released) => log.debug({ event: 'memory.trimmed', released, rssBefore: before, rss: process.memoryUsage.rss(), ms: Math.round(clock() - now.at) }, 'gave free memory back to the system'),
        (err: unknown) => log.warn({ event: 'memory.trim_failed', err: (err as Error).message }, 'malloc_trim failed'),
      )
      .finally(() => {
        trimming = false
        last = { at: clock(), cpu: cpuMs() }
      })
  }, CHECK_MS)
  timer.unref()
  return () => clearInterval(timer)
}

