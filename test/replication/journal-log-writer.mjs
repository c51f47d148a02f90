// Appends numbered entries to a journal on a segment log (the built
// dist/lib/replication/journal-log.js), as the primary does: logged, then
// synced in groups, trimmed now and then. Prints `durable N` once entries
// through N are synced, and `trim T` before it asks for a trim through T (a
// kill can come once the trim is on disk but before it returns: the test
// must know of every trim that may have happened; a write to a pipe is
// synchronous in node on Linux, so the line is in the pipe before the trim
// starts).
// Runs until killed (test/replication/journal-log.test.ts kills it at random
// points, also inside segment changes, and cuts the power under it).
// Usage: node journal-log-writer.mjs DIR SEGMENT_BYTES SEED
import { Journal } from '../../dist/lib/replication/journal.js'
import { SegmentDurableLog } from '../../dist/lib/replication/journal-log.js'
import { dataOf } from './journal-log-data.mjs'

const [dir, segmentBytes, seedArg] = process.argv.slice(2)
let seed = Number(seedArg)
const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648)
const log = await SegmentDurableLog.open(dir, { segmentBytes: Number(segmentBytes) })
const journal = await Journal.open(log, { epoch: 1, syncEveryCommit: false })
process.stdout.write(`ready ${journal.positions.lastAccepted}\n`)
for (;;) {
  const group = []
  for (let i = 1 + Math.floor(random() * 6); i > 0; i--) {
    const seq = journal.positions.lastAccepted + 1
    group.push(journal.append({ kind: 'write', volume: 1, offset: (seq % 64) * 4096, data: dataOf(seq) }).durable)
  }
  await Promise.all(group)
  if (random() < 0.5) {
    await journal.syncLogged()
    process.stdout.write(`durable ${journal.positions.lastDurable}\n`)
  }
  const p = journal.positions
  if (random() < 0.2 && p.lastDurable > p.trimmedThrough) {
    const through = p.trimmedThrough + Math.ceil(random() * (p.lastDurable - p.trimmedThrough))
    process.stdout.write(`trim ${through}\n`)
    await journal.trim(through)
  }
}
