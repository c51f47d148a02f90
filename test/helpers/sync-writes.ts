/**
 * Watches a LevelDB store's sync writes — the only thing that makes a logged
 * write survive a power cut — for tests of the power-loss order: `covers()`
 * is read when a sync write starts, and `synced(covered)` is called with it
 * once that sync write has finished (it covers what had ended by then).
 */
type SyncingStore = { put(k: Buffer, v: Buffer, o?: { sync?: boolean }): Promise<void> }

export function watchSyncWrites(store: unknown, covers: () => number, synced: (covered: number) => void): void {
  const db = store as SyncingStore
  const put = db.put.bind(db)
  db.put = async (k, v, o) => {
    if (!o?.sync) return put(k, v, o)
    const covered = covers()
    await put(k, v, o)
    synced(covered)
  }
}

type SyncingChunkStore = { sync(opts?: { flushUnlogged?: boolean; token?: number }): Promise<void> }

/**
 * The same watch on a storage system's store (StorageSystem.chunkStore): a
 * ChunkStore's sync is what makes its logged writes survive a power cut.
 */
export function watchStoreSyncs(system: { readonly chunkStore: unknown }, covers: () => number, synced: (covered: number) => void): void {
  const store = system.chunkStore as SyncingChunkStore
  const sync = store.sync.bind(store)
  store.sync = async (opts) => {
    const covered = covers()
    await sync(opts)
    synced(covered)
  }
}
