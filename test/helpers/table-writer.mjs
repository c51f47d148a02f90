// Writes TABLE_RUNS to a storage system, syncing after each (so each becomes
// a table file of its own length), then closes it and exits 0. The test
// reads the data back in another process. Run with
// VVFS_LEVELDB_REFUSE_DIRECT=1 to have every O_DIRECT write refused.
// Usage: node table-writer.mjs DIR
import { StorageSystem } from '../../dist/lib/storage/storage-system.js'
import { TABLE_RUNS, tableRunData } from './table-runs.mjs'

const [dir] = process.argv.slice(2)
const system = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
for (const run of TABLE_RUNS) {
  const data = tableRunData(run)
  await system.write(Array.from({ length: run.chunks }, (_, i) => ({ pca: run.first + i, data: data.subarray(i * 4096, (i + 1) * 4096) })), { unlogged: run.chunks >= 16 })
  await system.sync()
}
await system.close()
