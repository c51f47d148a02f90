// Opens N LevelDB storage systems under one memory budget (or none) and
// writes MIB MiB of unlogged whole-extent runs into each, all stores at
// once, then prints how far the process's peak RSS (VmHWM) rose above its
// RSS after opening them: what the stores' memtables and caches took.
// Usage: node memory-budget-writer.mjs DIR N BUDGET_BYTES|none MIB
import { readFileSync } from 'node:fs'
import { MemoryBudget } from '../../dist/lib/storage/memory-budget.js'
import { StorageSystem } from '../../dist/lib/storage/storage-system.js'

const [dir, n, budget, mib] = process.argv.slice(2)
const kib = (field) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024
const memory = budget === 'none' ? undefined : new MemoryBudget(Number(budget))
const systems = []
for (let i = 0; i < Number(n); i++) {
  systems.push(await StorageSystem.open({ sid: i + 1, name: `s${i}`, path: `${dir}/s${i}`, capacity: 1 << 30, create: true, memory }))
}
const base = kib('VmRSS')
const run = Buffer.alloc(256 * 4096, 7)
for (let extent = 0; extent < Number(mib); extent++) {
  await Promise.all(systems.map((s) => s.write(Array.from({ length: 256 }, (_, j) => ({ pca: extent * 256 + j, data: run.subarray(j * 4096, (j + 1) * 4096) })), { unlogged: true })))
}
const peak = kib('VmHWM')
for (const s of systems) await s.close()
process.stdout.write(JSON.stringify({ base, peak, grew: peak - base }) + '\n')
