/**
 * `vvfs replicate start … --wait` and `vvfs replicate status PAIR --wait`
 * (issue 13.8): follows a pair through its initial sync or resync with a
 * progress bar (bytes copied / to copy, rate, ETA) on a terminal, and
 * returns once the pair is replicating — the secondary a point in time of
 * the primary again. It throws when the pair stops or is paused (nothing
 * more will happen without the operator), and keeps waiting while the link
 * is down (the primary retries; the bar says so).
 *
 * Polls replicate.status: a sync's progress is in the pair's status, and the
 * state events alone carry no byte counts.
 */
import { SingleBar } from 'cli-progress'
import type { ControlClient } from '../control/client.js'
import type { ReplicationInfo } from '../control/schema.js'
import { VvfsError } from '../errors.js'
import { formatSize } from '../units.js'

/** A human sees ~4 updates a second as smooth; a status call costs the daemon well under 1 ms. */
const POLL_MS = 250

/** The pair is done with copying when it ships entries again with nothing left to copy. */
export function pairSettled(p: ReplicationInfo): boolean {
  return p.state === 'replicating' && p.sync.copied >= p.sync.total
}

export async function waitForPairSync(client: ControlClient, pair: string, json: boolean): Promise<ReplicationInfo> {
  const bar = json || !process.stderr.isTTY ? null : new SingleBar({ format: 'pair {pair} {state} [{bar}] {percent}% {done}/{all} {rate}/s ETA {eta_s}s{link}', hideCursor: true })
  const status = async () => {
    const [p] = (await client.call('replicate.status', { pair })).pairs.filter((x) => x.role === 'primary')
    if (!p) throw new VvfsError('PAIR_NOT_FOUND', `pair ${pair} has no primary side on this daemon: --wait follows the primary`)
    return p
  }
  let p = await status()
  bar?.start(Math.max(1, p.sync.total), p.sync.copied, { pair, state: p.state, done: '0 B', all: formatSize(p.sync.total), rate: '0 B', link: '' })
  let lastCopied = p.sync.copied
  let lastAt = Date.now()
  try {
    for (;;) {
      bar?.setTotal(Math.max(1, p.sync.total))
      const now = Date.now()
      const rate = now > lastAt ? ((p.sync.copied - lastCopied) * 1000) / (now - lastAt) : 0
      lastCopied = p.sync.copied
      lastAt = now
      bar?.update(p.sync.copied, { pair, state: p.state, done: formatSize(p.sync.copied), all: formatSize(p.sync.total), rate: formatSize(Math.max(0, rate)), link: p.link === 'down' ? ' (peer unreachable, retrying)' : '' })
      if (pairSettled(p)) return p
      if (p.state === 'stopped') throw new VvfsError('JOB_STATE', `pair ${pair} stopped before its copy finished${p.lastError ? `: ${p.lastError.code}: ${p.lastError.message}` : ''}`)
      if (p.state === 'paused') throw new VvfsError('JOB_STATE', `pair ${pair} is paused with ${formatSize(Math.max(0, p.sync.total - p.sync.copied))} still to copy (vvfs replicate resume ${pair})`)
      await new Promise((r) => setTimeout(r, POLL_MS))
      p = await status()
    }
  } finally {
    bar?.stop()
  }
}
