/**
 * The ChunkStore conformance suite (chunk-store.suite.ts) run against every
 * local implementation: the LevelDB store, the in-memory store (with and
 * without its synchronous read, and fenced), and the fault wrapper with no
 * fault armed around each of them.
 */
import { join } from 'node:path'
import type { ChunkStore } from '../../lib/storage/chunk-store.js'
import { FaultInjector, type FaultGate } from '../../lib/storage/fault-injector.js'
import { FaultyStore } from '../../lib/storage/faulty-store.js'
import { LevelChunkStore } from '../../lib/storage/level-store.js'
import { MemoryChunkStore, type MemoryStoreOptions } from '../../lib/storage/memory-store.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { chunkStoreSuite, type StoreUnderTest } from './chunk-store.suite.js'

async function levelStore({ sid, name }: { sid: number; name: string }): Promise<StoreUnderTest> {
  const dir = tempDir('vvfs-chunkstore-')
  const path = join(dir, name)
  let open: ChunkStore = await LevelChunkStore.open({ sid, name, path, create: true })
  return {
    store: open,
    reopen: async () => (open = await LevelChunkStore.open({ sid, name, path, create: false })),
    cleanup: async () => {
      await open.close()
      removeDir(dir)
    },
  }
}

function memoryStore(extra: Partial<MemoryStoreOptions> = {}) {
  return async ({ sid, name }: { sid: number; name: string }): Promise<StoreUnderTest> => {
    let open = MemoryChunkStore.create({ sid, name, ...extra })
    const again = (lose: (s: MemoryChunkStore) => void) => async () => {
      lose(open)
      return (open = open.reopen())
    }
    return {
      store: open,
      reopen: again(() => {}),
      crash: again((s) => s.crash()),
      powerCut: again((s) => s.powerCut()),
      cleanup: () => open.close(),
    }
  }
}

/**
 * `factory`'s stores behind the fault gate of a storage system whose every
 * rule was cleared (a real gate, not a stand-in): the wrapper with no fault
 * armed. Reopened stores go behind the same gate.
 */
function behindClearedGate(factory: (opts: { sid: number; name: string }) => Promise<StoreUnderTest>) {
  return async (opts: { sid: number; name: string }): Promise<StoreUnderTest> => {
    const injector = new FaultInjector(() => {})
    const target: { sid: number; name: string; faults: FaultGate | null } = { ...opts, faults: null }
    const rule = injector.add(target, { op: 'any', error: 'EIO' })
    const gate = target.faults!
    injector.clear(rule.id)
    const inner = await factory(opts)
    const wrap = (hook?: () => Promise<ChunkStore>) => hook && (async () => new FaultyStore(await hook(), gate))
    return { store: new FaultyStore(inner.store, gate), reopen: wrap(inner.reopen), crash: wrap(inner.crash), powerCut: wrap(inner.powerCut), cleanup: inner.cleanup }
  }
}

const level = { syncRead: true, unlogged: true, fencing: false, reopen: true }
const memory = { ...level, crash: true, powerCut: true }
// The wrapper offers no synchronous read (a check may delay) whatever the store under it does.
const fencedWithoutSyncRead = { ...memory, fencing: true, syncRead: false }

chunkStoreSuite('LevelDB', levelStore, level)
chunkStoreSuite('memory', memoryStore(), memory)
chunkStoreSuite('memory, fenced, without a synchronous read', memoryStore({ fencing: true, syncRead: false }), fencedWithoutSyncRead)
chunkStoreSuite('fault wrapper with no fault armed, over LevelDB', behindClearedGate(levelStore), { ...level, syncRead: false })
chunkStoreSuite('fault wrapper with no fault armed, over memory (fenced)', behindClearedGate(memoryStore({ fencing: true })), fencedWithoutSyncRead)
