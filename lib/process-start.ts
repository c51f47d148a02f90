/**
 * What a long-running vvfs process (the daemon, a storage server) does
 * first, before it opens, logs or listens: start itself again with the
 * malloc arena limit and the node flags it needs from its first
 * instruction (malloc-tuning.ts, gc-tuning.ts startFlags; what it held is
 * gone after that), set the garbage collector's heap growth (gc-tuning.ts),
 * and only then make its logger, which says if the restart failed (the
 * arena limit is then set by mallopt for the threads to come).
 */
import { tuneGarbageCollector } from './gc-tuning.js'
import type { Logger } from './log.js'
import { ALLOCATOR_ENV, reexecTuned, tuneMalloc } from './malloc-tuning.js'

/**
 * Tunes this process as above — `nodeFlags` are node flags it must start
 * with (gc-tuning.ts startFlags) — and returns the logger `makeLog` made.
 */
export function startLongRunningProcess(makeLog: () => Logger, nodeFlags: string[] = []): Logger {
  const restart = reexecTuned(nodeFlags)
  tuneGarbageCollector()
  // An operator's MALLOC_ARENA_MAX stays in force: mallopt would override it.
  if (restart !== 'kept' && process.env[ALLOCATOR_ENV] === undefined) tuneMalloc()
  const log = makeLog()
  if (restart !== 'kept')
    log.warn(
      { event: 'memory.reexec_failed', err: restart.failed, nodeFlags },
      'could not restart with the malloc arena limit and node flags from the start (memory may grow past the budget)',
    )
  return log
}
