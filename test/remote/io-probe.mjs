// One write of LENGTH bytes of SEED's pattern at OFFSET of FILE, then fsync,
// then a read back; prints {ok, code, ms} as JSON (code: the errno name of
// the first failure). Run as a child so a stuck call cannot stall the test.
// Usage: node io-probe.mjs FILE OFFSET LENGTH SEED
import { open } from 'node:fs/promises'
import { performance } from 'node:perf_hooks'

const [file, offsetArg, lengthArg, seedArg] = process.argv.slice(2)
const offset = Number(offsetArg)
const length = Number(lengthArg)
const data = Buffer.alloc(length)
for (let i = 0; i < length; i += 4) data.writeUInt32LE((Number(seedArg) * 2654435761 + i) >>> 0, i)
const t0 = performance.now()
let fh
try {
  fh = await open(file, 'r+')
  await fh.write(data, 0, length, offset)
  await fh.sync()
  const back = Buffer.alloc(length)
  await fh.read(back, 0, length, offset)
  if (!back.equals(data)) throw Object.assign(new Error('read back differs'), { code: 'EBADDATA' })
  process.stdout.write(JSON.stringify({ ok: true, ms: performance.now() - t0 }) + '\n')
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, code: err.code ?? String(err), ms: performance.now() - t0 }) + '\n')
} finally {
  await fh?.close().catch(() => {})
}
