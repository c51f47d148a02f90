/**
 * RestartingStore: a ChunkStore on a "server machine" that can restart under
 * a live relay (test/relay/lost-writes.test.ts, the journal's redo).
 */
import type { ChunkBatch, ChunkStore } from '../../lib/storage/chunk-store.js'
import type { MemoryChunkStore } from '../../lib/storage/memory-store.js'

/**
 * A store on a "server machine" that can restart under a live relay: what no
 * sync covered is gone (MemoryChunkStore's power cut), the store answers
 * again at once, and writeLosses counts the restart — what RemoteChunkStore
 * does when a new session shows another boot id.
 */
export class RestartingStore implements ChunkStore {
  writeLosses = 0
  /** Called at the start of every sync (a test restarts the machine there: the sync's reconnect meets the new boot). */
  beforeSync: (() => void) | null = null
  /** Called with every batch before it is applied. */
  onApply: ((batch: ChunkBatch) => void) | null = null
  constructor(private inner: MemoryChunkStore) {}
  get identity() {
    return this.inner.identity
  }
  get capabilities() {
    return { ...this.inner.capabilities, syncRead: false, localPath: null }
  }
  restartMachine(): void {
    this.inner.powerCut()
    this.inner = this.inner.reopen()
    this.writeLosses++
  }
  readRun(first: number, count: number, into: Buffer, offset?: number) {
    return this.inner.readRun(first, count, into, offset)
  }
  readMany(pcas: number[]) {
    return this.inner.readMany(pcas)
  }
  apply(batch: ChunkBatch) {
    this.onApply?.(batch)
    return this.inner.apply(batch)
  }
  stored(first: number, count: number, limit?: number) {
    return this.inner.stored(first, count, limit)
  }
  sync(opts?: { flushUnlogged?: boolean; token?: number }) {
    this.beforeSync?.()
    return this.inner.sync(opts)
  }
  close() {
    return this.inner.close()
  }
}

