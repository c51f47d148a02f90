/**
 * The relay over a failing storage system (in-process, real LevelDB stores,
 * faults from lib/storage/fault-injector.ts): a write that fails leaves the
 * volume map in memory equal to what is on disk, so a later write persists
 * what it must and a restart reads what was acknowledged by fsync.
 */
import { afterAll, describe, expect, it } from 'vitest'
import { CHUNK_SIZE, EXTENT_SIZE } from '../../lib/layout.js'
import type { ThinFailure } from '../../lib/relay/thin.js'
import { FaultInjector, type FaultSpec, type InjectedFault } from '../../lib/storage/fault-injector.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { openStack, type Stack, type StackOptions } from '../helpers/stack.js'

const dirs: string[] = []
afterAll(() => dirs.forEach(removeDir))

async function freshStack(): Promise<{ stack: Stack; opts: StackOptions }> {
  const dir = tempDir('vvfs-failed-writes-')
  dirs.push(dir)
  const opts: StackOptions = { dir, systems: 1, capacity: 8 * EXTENT_SIZE, size: 4 * EXTENT_SIZE }
  return { stack: await openStack(opts, true), opts }
}

function inject(stack: Stack, spec: FaultSpec): InjectedFault[] {
  const seen: InjectedFault[] = []
  new FaultInjector((f) => seen.push(f)).add(stack.pool.list()[0]!, spec)
  return seen
}

async function readBack(stack: Stack, offset: number, length: number): Promise<Buffer> {
  const into = Buffer.alloc(length)
  await stack.volume.read(offset, length, into)
  return into
}

/** Writes `data` again once the fault is spent, fsyncs, and checks it reads back, also after a restart; returns the reopened stack. */
async function rewriteAndRestart(stack: Stack, opts: StackOptions, offset: number, data: Buffer): Promise<Stack> {
  await stack.volume.write(offset, data)
  await stack.volume.flush()
  expect((await readBack(stack, offset, data.length)).equals(data)).toBe(true)
  await stack.close()
  const reopened = await openStack(opts, false)
  expect((await readBack(reopened, offset, data.length)).equals(data)).toBe(true)
  return reopened
}

describe('a failed write leaves the map in memory equal to the map on disk', () => {
  it('after a failed write, the extent stays mapped in memory with no record: a fragment', async () => {
    const { stack, opts } = await freshStack()
    const injected = inject(stack, { op: 'write', error: 'ENOSPC', count: 1 })
    const data = Buffer.alloc(CHUNK_SIZE, 0x5a)
    // Answered (write-behind), then its store write fails: the flush reports it.
    await stack.volume.write(0, data)
    await expect(stack.volume.flush()).rejects.toMatchObject({ code: 'STORAGE_FULL' })
    expect(injected).toHaveLength(1)
    expect(stack.map.locate(0).kind).toBe('unallocated')
    // The space returns once the records that released it are durable (ThinLayer.freeOnceReleased).
    await stack.thin.settle()
    expect(stack.pool.totals().allocated).toBe(0)
    // The space problem is gone: the rewrite must persist its fragment and record.
    const reopened = await rewriteAndRestart(stack, opts, 0, data)
    expect(reopened.map.locate(0).kind).toBe('fragment')
    await reopened.close()
  })

  it('after a failed write, the extent stays mapped in memory with no record: a whole slot whose clear failed', async () => {
    const { stack, opts } = await freshStack()
    // The new slot's clear looks for stored chunks first (a read): fail it.
    inject(stack, { op: 'read', error: 'EIO', count: 1 })
    const data = Buffer.alloc(EXTENT_SIZE, 0x3c)
    await expect(stack.volume.write(EXTENT_SIZE, data).then(() => stack.volume.flush())).rejects.toMatchObject({ code: 'IO_ERROR' })
    expect(stack.map.locate(EXTENT_SIZE / CHUNK_SIZE).kind).toBe('unallocated')
    // The space returns once the records that released it are durable (ThinLayer.freeOnceReleased).
    await stack.thin.settle()
    expect(stack.pool.totals().allocated).toBe(0)
    const reopened = await rewriteAndRestart(stack, opts, EXTENT_SIZE, data)
    expect(reopened.map.locate(EXTENT_SIZE / CHUNK_SIZE).kind).toBe('whole')
    expect(reopened.pool.totals().allocated).toBe(EXTENT_SIZE)
    await reopened.close()
  })

  it('keeps a slot whose record was written when only its data failed, and later writes fill it', async () => {
    const { stack, opts } = await freshStack()
    inject(stack, { op: 'write', error: 'EIO', count: 1 })
    const data = Buffer.alloc(EXTENT_SIZE, 0x11)
    await stack.volume.write(0, data)
    await expect(stack.volume.flush()).rejects.toMatchObject({ code: 'IO_ERROR' })
    expect(stack.map.locate(0).kind).toBe('whole')
    await (await rewriteAndRestart(stack, opts, 0, data)).close()
  })

  it('promotion reports its errors and leaves the fragments mapped when it fails', async () => {
    const { stack, opts } = await freshStack()
    const failures: ThinFailure[] = []
    stack.thin.onFailure = (f) => failures.push(f)
    // 64 single-chunk writes (64 fragments: promotion is due), then the promotion's data write fails.
    inject(stack, { op: 'write', error: 'EIO', after: 64, count: 1 })
    const chunks = 64
    for (let c = 0; c < chunks; c++) await stack.volume.write(c * CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, c + 1))
    await stack.volume.flush()
    await stack.thin.settle()
    expect(failures.map((f) => [f.what, f.extent, (f.err as { code?: string }).code])).toEqual([['promote', 0, 'IO_ERROR']])
    expect(stack.map.get(0)?.kind).toBe('fragments')
    expect(stack.pool.totals().allocated).toBe(chunks * CHUNK_SIZE)
    await stack.close()
    const reopened = await openStack(opts, false)
    for (let c = 0; c < chunks; c++) expect((await readBack(reopened, c * CHUNK_SIZE, CHUNK_SIZE)).equals(Buffer.alloc(CHUNK_SIZE, c + 1))).toBe(true)
    await reopened.close()
  })
})

describe('fault injection', () => {
  it('is deterministic with a seed: the same operations fail', async () => {
    const pattern = async (seed: number) => {
      const { stack } = await freshStack()
      // Reads of unallocated chunks reach no store: write one first.
      await stack.volume.write(0, Buffer.alloc(CHUNK_SIZE, 1))
      await stack.volume.flush()
      inject(stack, { op: 'read', error: 'EIO', probability: 0.5, seed })
      const failed: number[] = []
      for (let i = 0; i < 40; i++) {
        await stack.volume.read(0, CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE)).catch(() => failed.push(i))
      }
      await stack.close()
      return failed
    }
    const first = await pattern(7)
    expect(first).toEqual(await pattern(7))
    expect(first).not.toEqual(await pattern(8))
  })
})
