// Run by test/unit/malloc-tuning.test.ts with --expose-gc: fills ~125 MiB
// of malloc'd buffers, pins the heap's top with one more, frees the rest,
// and reports RSS before and after native/malloc's trim() as JSON.
import { createRequire } from 'node:module'
import { setTimeout as sleep } from 'node:timers/promises'

const addon = createRequire(import.meta.url)(process.argv[2])
const rss = () => process.memoryUsage.rss()
const bufs = []
for (let i = 0; i < 2000; i++) bufs.push(Buffer.alloc(64 * 1024, 1))
const pin = Buffer.alloc(64 * 1024, 1)
bufs.length = 0
for (let i = 0; i < 5; i++) {
  globalThis.gc()
  await sleep(50)
}
const before = rss()
const released = await addon.trim()
const after = rss()
process.stdout.write(JSON.stringify({ before, after, released, pinned: pin.length }))
