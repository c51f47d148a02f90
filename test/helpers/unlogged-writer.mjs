// Writes bulk chunks to a storage system without LevelDB's log, syncs if
// asked, then dies by SIGKILL — as a daemon killed at that moment would.
// Usage: node unlogged-writer.mjs DIR sync|nosync
import { StorageSystem } from '../../dist/lib/storage/storage-system.js'

const [dir, mode] = process.argv.slice(2)
const system = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 64 * 1024 * 1024, create: false })
const data = Buffer.alloc(32 * 4096)
for (let i = 0; i < 32; i++) data.fill(i + 1, i * 4096, (i + 1) * 4096)
await system.write(Array.from({ length: 32 }, (_, i) => ({ pca: i, data: data.subarray(i * 4096, (i + 1) * 4096) })), { unlogged: true })
if (mode === 'sync') await system.sync()
process.kill(process.pid, 'SIGKILL')
