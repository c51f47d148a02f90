/**
 * FaultyStore: the fault gate of one storage system (fault-injector.ts,
 * `vvfs fault`) as a ChunkStore decorator — each call passes the gate's
 * check for its operation class, then goes to the store underneath: reads
 * (readRun, readMany, stored) check `read`, apply checks `write`, sync checks
 * `sync`; close is never failed (so shutdown can flush).
 *
 * A StorageSystem wraps its store in one while a rule is armed for it and
 * unwraps it when the last rule is cleared (StorageSystem.faults), so a
 * system with no rule has nothing on its fast path. While wrapped it offers
 * no synchronous read (a check may delay) and no local path (a worker
 * thread opening the directory would pass the gate by): migration copies
 * then run on the main thread, through this wrapper (chunk-mover.ts).
 *
 * Concurrency: the gate's check runs synchronously up to its delay, so rule
 * counters advance in the order calls start. Failure modes: the injected
 * error (IO_ERROR or STORAGE_FULL), before the store underneath is touched.
 */
import type { ChunkBatch, ChunkStore, ChunkStoreCapabilities, StoreIdentity } from './chunk-store.js'
import type { FaultGate } from './fault-injector.js'

export class FaultyStore implements ChunkStore {
  readonly identity: StoreIdentity
  readonly capabilities: ChunkStoreCapabilities

  constructor(
    /** The store the gate guards. */
    readonly inner: ChunkStore,
    private readonly gate: FaultGate,
  ) {
    this.identity = inner.identity
    this.capabilities = { ...inner.capabilities, syncRead: false, localPath: null }
  }

  async readRun(first: number, count: number, into: Buffer, offset?: number): Promise<void> {
    await this.gate.check('read')
    return this.inner.readRun(first, count, into, offset)
  }

  async readMany(pcas: number[]): Promise<(Buffer | undefined)[]> {
    await this.gate.check('read')
    return this.inner.readMany(pcas)
  }

  async apply(batch: ChunkBatch): Promise<void> {
    await this.gate.check('write')
    return this.inner.apply(batch)
  }

  async stored(first: number, count: number, limit?: number): Promise<number[]> {
    await this.gate.check('read')
    return this.inner.stored(first, count, limit)
  }

  async sync(opts?: { flushUnlogged?: boolean; token?: number }): Promise<void> {
    await this.gate.check('sync')
    return this.inner.sync(opts)
  }

  get writeLosses(): number | undefined {
    return this.inner.writeLosses
  }

  close(): Promise<void> {
    return this.inner.close()
  }
}
