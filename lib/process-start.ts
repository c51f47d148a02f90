/**
 * What a long-running vvfs process (the daemon, a storage server) does
 * first, before it opens, logs or listens: start itself again with the
 * malloc arena limit (malloc-tuning.ts; what it held is gone after that),
 * set the garbage collector's heap growth (gc-tuning.ts), and only then
 * make its logger, which says if the restart failed (the limit is then set
 * by mallopt for the threads to come).
 */
import { tuneGarbageCollector } from './gc-tuning.js'
import type { Logger } from './log.js'
import { reexecWithArenaLimit, tuneMalloc } from './malloc-tuning.js'

/** Tunes this process as above and returns the logger `makeLog` made. */
export function startLongRunningProcess(makeLog: () => Logger): Logger {
  const arenas = reexecWithArenaLimit()
  tuneGarbageCollector()
  if (arenas !== 'kept') tuneMalloc()
  const log = makeLog()
  if (arenas !== 'kept')
    log.warn({ event: 'memory.reexec_failed', err: arenas.failed }, 'could not restart with the malloc arena limit from the start (memory may grow past the budget)')
  return log
}
