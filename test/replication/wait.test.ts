/**
 * `vvfs replicate start … --wait` and `replicate status PAIR --wait` (issue
 * 13.8): on a terminal a progress bar follows the initial sync, and the
 * command returns only once the pair replicates — the secondary's image is
 * then the primary's; a paused pair is an error, not an endless wait.
 */
import { spawn } from 'node:child_process'
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs'
import { afterAll, expect, it } from 'vitest'
import { cliFor, onTerminal } from '../helpers/cli.js'
import { cleanupAll, VVFS } from '../helpers/daemon.js'
import { removePairDirs, caughtUp, readImage, startPair, waitForPair, type Pair } from './daemons.js'

let p: Pair | undefined
afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

/** Runs `line` on a pseudo-terminal to its end: exit status and what the terminal showed. */
function onTty(line: string): Promise<{ code: number | null; shown: string; ms: number }> {
  const [cmd, args] = onTerminal(line)
  const started = Date.now()
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let shown = ''
  child.stdout.on('data', (b: Buffer) => (shown += b.toString()))
  child.stderr.on('data', (b: Buffer) => (shown += b.toString()))
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, shown, ms: Date.now() - started })))
}

it('start --wait draws the initial sync and returns once the pair replicates with identical images', { timeout: 90_000 }, async () => {
  p = await startPair()
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'vol', size: 32 * 1024 * 1024 })
  // 8 MiB of data in 1 MiB pieces every 4 MiB: four extents to copy.
  const fd = openSync(primary.file('vol'), 'r+')
  for (let i = 0; i < 8; i++) writeSync(fd, Buffer.alloc(1024 * 1024, 1 + i), 0, 1024 * 1024, i * 4 * 1024 * 1024)
  fsyncSync(fd)
  closeSync(fd)
  // 2 MiB/s: the copy takes seconds, long enough to draw.
  const r = await onTty(`${process.execPath} ${VVFS} replicate start vol --to ${p.secondaryAddress} --as waited --peer-key ${p.keyFile} --rate 2M --wait --socket ${primary.socket}`)
  expect(r.code, r.shown).toBe(0)
  expect(r.shown).toMatch(/pair waited (syncing|replicating) \[/)
  expect(r.shown).toMatch(/pair waited: vol → .* replicating/)
  expect(r.ms).toBeGreaterThan(2000)
  // Returned only once replicating: nothing left to copy, the images equal now.
  const s = await waitForPair(primary, 'waited', 'primary', caughtUp, 10_000)
  expect(s.sync.copied).toBeGreaterThanOrEqual(s.sync.total)
  expect(Buffer.compare(readImage(primary.file('vol')), readImage(secondary.file('waited')))).toBe(0)

  const vvfs = cliFor(() => primary.socket)
  // Already replicating: status --wait answers at once, in JSON too.
  const done = vvfs('replicate', 'status', 'waited', '--wait', '--json')
  expect(done.code, done.err).toBe(0)
  expect(JSON.parse(done.out).pairs[0]).toMatchObject({ pair: 'waited', role: 'primary', state: 'replicating' })
  // A paused pair will not get anywhere without the operator: an error, not a hang.
  await primary.client.call('replicate.pause', { pair: 'waited' })
  const paused = vvfs('replicate', 'status', 'waited', '--wait')
  expect(paused.code).not.toBe(0)
  expect(paused.err).toMatch(/JOB_STATE|paused/)
  // status --wait needs a pair.
  expect(vvfs('replicate', 'status', '--wait').code).not.toBe(0)
})
