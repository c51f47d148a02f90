/**
 * TEMPORARY (issue 14, until `lib/storage/level-store.ts` from the seams work
 * lands on this branch): a ChunkStore over today's StorageSystem, so the
 * storage server serves the daemon's own LevelDB store code — not a second
 * implementation. Replace `openInterimLevelStore` by the LevelDB ChunkStore's
 * opener in `lib/storage/remote/serve.ts` and delete this file.
 *
 * Owns: nothing but the StorageSystem it opened.
 *
 * Known gap of the interim: a batch with both `clears` and `writes` is two
 * LevelDB operations (clearRange, then one write batch), so a crash between
 * them can leave the clear without the writes. The relay's batches do not
 * mix them today (a slot clear is its own call); the LevelDB ChunkStore will
 * apply both in one batch.
 *
 * Durability: apply's `sync` is a synced write; sync() flushes the memtable
 * and syncs the log (StorageSystem.sync), so it covers unlogged batches too.
 */
import { EXTENT_SIZE } from '../../layout.js'
import type { ChunkBatch, ChunkStore, ChunkStoreCapabilities, StoreIdentity } from '../chunk-store.js'
import { StorageSystem } from '../storage-system.js'

export class InterimLevelStore implements ChunkStore {
  readonly identity: StoreIdentity
  readonly capabilities: ChunkStoreCapabilities

  private constructor(private readonly system: StorageSystem) {
    this.identity = { sid: system.sid, name: system.name, format: 1, chunkSize: 4096 }
    this.capabilities = { syncRead: true, unlogged: true, localPath: system.path, fencing: false, location: 'local' }
  }

  static async open(opts: { sid: number; name: string; path: string; create: boolean }): Promise<InterimLevelStore> {
    // The capacity here only sizes StorageSystem's free-space table, which the server does not use.
    return new InterimLevelStore(await StorageSystem.open({ ...opts, capacity: EXTENT_SIZE }))
  }

  readRun(first: number, count: number, into: Buffer, offset = 0): Promise<void> {
    return this.system.readRun(first, count, into, offset)
  }

  readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    return this.system.readMany(pcas)
  }

  async apply(batch: ChunkBatch): Promise<void> {
    for (const c of batch.clears ?? []) await this.system.clearRange(c.first, c.count)
    await this.system.write(batch.writes ?? [], { sync: batch.sync, unlogged: batch.unlogged })
    if (batch.sync && (batch.writes ?? []).length === 0 && (batch.clears ?? []).length > 0) await this.system.sync()
  }

  async stored(first: number, count: number, limit = Infinity): Promise<number[]> {
    const all = await this.system.storedChunks(first, count)
    return all.length > limit ? all.slice(0, limit) : all
  }

  sync(): Promise<void> {
    return this.system.sync()
  }

  close(): Promise<void> {
    return this.system.close()
  }
}
