/**
 * `--watch` for the CLI's status commands (`vvfs job list`, `vvfs pool
 * status`): asks the daemon again every interval and shows the answer.
 *
 *   on a terminal: redraws in place (cursor home, each line cleared, the
 *                  rest of the screen cleared), a header with the time;
 *   otherwise:     prints each refresh plainly after the last one, separated
 *                  by a blank line (with --json: one JSON document per line);
 *   Ctrl-C:        exits 0, the cursor on a fresh line below the last frame.
 *
 * Concurrency: one request at a time over one connection; the next waits
 * for the interval after the answer, so a slow daemon is never asked twice
 * at once. Failure: a refused or lost request ends the watch with the error
 * (exit 1), as the command without --watch would.
 */
import type { Argv } from 'yargs'
import { parseDuration } from '../units.js'

/** As watch(1). */
export const DEFAULT_WATCH_INTERVAL = '2s'
/** Below this a refresh is mostly the daemon's own work, not news. */
const MIN_INTERVAL_MS = 100

export function watchOptions<T>(y: Argv<T>) {
  return y
    .option('watch', { alias: 'w', type: 'boolean', default: false, describe: 'refresh until Ctrl-C (in place on a terminal)' })
    .option('interval', { type: 'string', default: DEFAULT_WATCH_INTERVAL, describe: 'time between refreshes with --watch, e.g. 500ms, 5s' })
}

export interface WatchTarget<R> {
  title: string
  fetch: () => Promise<R>
  human: (r: R) => string
  json: boolean
  interval: string
}

const HOME = '\x1b[H'
const CLEAR_LINE = '\x1b[K'
const CLEAR_BELOW = '\x1b[J'

/** Runs until SIGINT (resolves: exit 0) or a failed request (rejects). */
export async function watch<R>(t: WatchTarget<R>, out: NodeJS.WriteStream = process.stdout): Promise<void> {
  const intervalMs = Math.max(MIN_INTERVAL_MS, parseDuration(t.interval, 'interval'))
  const tty = out.isTTY === true && !t.json
  let onInt = () => {}
  const interrupted = new Promise<'stop'>((resolve) => (onInt = () => resolve('stop')))
  process.once('SIGINT', onInt)
  let timer: NodeJS.Timeout | undefined
  try {
    if (tty) out.write('\x1b[2J')
    for (let first = true; ; first = false) {
      const r = await Promise.race([t.fetch(), interrupted])
      if (r === 'stop') return
      if (t.json) out.write(JSON.stringify(r) + '\n')
      else if (tty) {
        const head = `every ${intervalMs / 1000}s: ${t.title}    ${new Date().toLocaleTimeString()}`
        const lines = [head, '', ...t.human(r).split('\n')]
        out.write(HOME + lines.map((l) => l + CLEAR_LINE).join('\n') + '\n' + CLEAR_BELOW)
      } else out.write((first ? '' : '\n') + t.human(r) + '\n')
      const next = new Promise<'next'>((resolve) => (timer = setTimeout(() => resolve('next'), intervalMs)))
      if ((await Promise.race([next, interrupted])) === 'stop') return
    }
  } finally {
    clearTimeout(timer)
    process.removeListener('SIGINT', onInt)
  }
}
