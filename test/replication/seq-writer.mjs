// Issues numbered synchronous 4 KiB writes (O_DIRECT|O_SYNC) to a volume
// file: write FIRST, FIRST+1, … (seq-blocks.mjs), appending each number to
// ACKLOG once its write returned. Stops after the write under way on
// SIGTERM, or at the first error (the daemon was killed), exiting 0.
// FILES is one volume file, or several comma-separated (a consistency
// group): write `seq` then goes to file seq % n, so the files share one
// sequence.
// Usage: node seq-writer.mjs FILES BLOCKS FIRST ACKLOG
import { appendFileSync, closeSync, constants, openSync, writeSync } from 'node:fs'
import { setImmediate } from 'node:timers/promises'
import { BLOCK, blockOf, offsetOf } from './seq-blocks.mjs'

const [files, blocksArg, firstArg, ackLog] = process.argv.slice(2)
const blocks = Number(blocksArg)
let stop = false
process.on('SIGTERM', () => (stop = true))
const fds = files.split(',').map((file) => openSync(file, constants.O_RDWR | constants.O_DIRECT | constants.O_SYNC))
let seq = Number(firstArg)
try {
  while (!stop) {
    writeSync(fds[seq % fds.length], blockOf(seq, blocks), 0, BLOCK, offsetOf(seq, blocks) * BLOCK)
    appendFileSync(ackLog, `${seq}\n`)
    seq++
    // Let a SIGTERM in between writes.
    await setImmediate()
  }
  for (const fd of fds) closeSync(fd)
} catch (err) {
  process.stdout.write(`writer stopped at ${seq}: ${err.code ?? err.message}\n`)
}
process.exit(0)
