// Writes non-overlapping random blocks to a volume file and fsyncs every few
// writes; after each successful fsync it appends the writes it made durable
// to a log. Runs until an I/O error (the daemon was killed) or a time limit.
// Usage: node crash-writer.mjs FILE LOG SEED SECONDS
import { open, appendFile } from 'node:fs/promises'
import { blockData } from './block-data.mjs'

const [file, log, seedArg, secondsArg] = process.argv.slice(2)
let seed = Number(seedArg) >>> 0 || 1
const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32)
const end = Date.now() + Number(secondsArg) * 1000

const fh = await open(file, 'r+')
const { size } = await fh.stat()
const SLOT = 192 * 1024
const slots = Math.floor(size / SLOT)
const order = [...Array(slots).keys()]
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(rand() * (i + 1))
  ;[order[i], order[j]] = [order[j], order[i]]
}
let pending = []
let id = 0
try {
  for (const slot of order) {
    if (Date.now() > end) break
    const length = 1 + Math.floor(rand() * (SLOT - 1))
    const offset = slot * SLOT + Math.floor(rand() * (SLOT - length))
    id++
    await fh.write(blockData(id, length), 0, length, offset)
    pending.push({ id, offset, length })
    if (pending.length >= 1 + Math.floor(rand() * 8)) {
      await fh.sync()
      await appendFile(log, pending.map((w) => JSON.stringify(w)).join('\n') + '\n')
      pending = []
    }
  }
} catch (err) {
  process.stdout.write(`writer stopped: ${err.code ?? err.message}\n`)
  process.exit(0)
}
await fh.close()
