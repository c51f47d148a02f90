// Writes chunk runs to a storage system, syncing after each (so each becomes
// a table file of its own length), then closes it and exits 0. Run i of
// RUNS ({first, chunks}) holds blockData(first, chunks * 4096); the test
// reads it back in another process. With VVFS_LEVELDB_REFUSE_DIRECT=1 every
// O_DIRECT write is refused.
// Usage: node table-writer.mjs DIR RUNS-JSON
import { StorageSystem } from '../../dist/lib/storage/storage-system.js'
import { blockData } from './block-data.mjs'

const [dir, runs] = process.argv.slice(2)
const system = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
for (const run of JSON.parse(runs)) {
  const data = blockData(run.first, run.chunks * 4096)
  await system.write(Array.from({ length: run.chunks }, (_, i) => ({ pca: run.first + i, data: data.subarray(i * 4096, (i + 1) * 4096) })), { unlogged: run.chunks >= 16 })
  await system.sync()
}
await system.close()
