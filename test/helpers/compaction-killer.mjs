// Opens a storage system, writes version V of its chunks (unlogged) and
// syncs them, then compacts it and dies by SIGKILL right after step STEP —
// as a daemon killed in the middle of a compaction would.
// Usage: node compaction-killer.mjs DIR V STEP
import { StorageSystem } from '../../dist/lib/storage/storage-system.js'
import { spreadChunks } from './spread-chunks.mjs'

const [dir, v, step] = process.argv.slice(2)
const system = await StorageSystem.open({ sid: 1, name: 's1', path: dir, capacity: 1 << 40, create: false })
await system.write(spreadChunks(Number(v)), { unlogged: true })
await system.sync()
await system.compact({
  progress: (done) => {
    if (done === Number(step)) process.kill(process.pid, 'SIGKILL')
  },
})
process.kill(process.pid, 'SIGKILL')
