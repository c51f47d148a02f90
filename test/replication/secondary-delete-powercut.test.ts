/**
 * A secondary volume deleted, then the power cut (test/helpers/powercut.ts,
 * which undoes a name change no directory fsync covered): the volume stays
 * deleted. Its pair's store (STATE/replication/secondary/<pair>) is removed
 * after the catalog drops the volume; the removal must be durable before
 * the delete returns, or the cut brings the store back and the next start
 * opens it as a pair and re-creates the deleted volume as its replica.
 */
import { afterAll, expect, it } from 'vitest'
import { writeAt } from '../helpers/files.js'
import { cleanupAll } from '../helpers/daemon.js'
import { cliFor } from '../helpers/cli.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'

const MiB = 1024 * 1024
let p: Pair | undefined

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

it('a deleted secondary volume stays deleted across a power cut right after the delete', { timeout: 120_000 }, async () => {
  p = await startPair({ powerLoss: true })
  const { primary, secondary } = p
  await primary.client.call('volume.create', { name: 'db', size: 4 * MiB })
  writeAt(primary.file('db'), 0, Buffer.alloc(64 * 1024, 1))
  const vvfs = cliFor(() => primary.socket)
  const started = vvfs('replicate', 'start', 'db', '--to', p.secondaryAddress, '--as', 'db-copy', '--peer-key', p.keyFile, '--json')
  expect(started.code, started.err).toBe(0)
  await waitForPair(primary, 'db-copy', 'primary', caughtUp)
  const stopped = vvfs('replicate', 'stop', 'db-copy')
  expect(stopped.code, stopped.err).toBe(0)
  await secondary.client.call('volume.delete', { name: 'db-copy' })
  await secondary.powerCut()
  await secondary.restart()
  expect((await secondary.client.call('volume.list', {})).volumes.map((v) => v.name)).not.toContain('db-copy')
  expect((await secondary.client.call('replicate.list', {})).pairs).toEqual([])
})
