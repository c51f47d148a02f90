/**
 * Measures the LevelDB choices lib/storage/storage-system.ts makes, on this
 * machine, with the patched classic-level vvfs builds:
 *   - reading 128 KiB (32 chunks) at queue depth 1: getMany vs a range
 *     iterator (why short runs use getMany);
 *   - reading 1 MiB (256 chunks): range scan vs getMany (why long runs scan);
 *   - overwrite ingest of 4 KiB chunks in 128 KiB batches for several write
 *     buffer sizes (STORE_OPTIONS.writeBufferSize);
 *   - unlogged ingest into three stores, four batches in flight, as the relay
 *     writes a sequential stream: MB/s and the process's CPU seconds per GiB
 *     (what memtable flushes cost; patches/ classic-level's table buffer).
 *
 *   node dist/bench/leveldb-options.js [seconds per case, default 4]
 *
 * Never: touches a vvfs state directory (it works in a temp directory).
 */
import { ClassicLevel } from 'classic-level'
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { dataKey, STORE_OPTIONS, writeChunkRun } from '../lib/storage/level-store.js'

const CHUNK = 4096
const REGION = 256 * 1024 * 1024
const CHUNKS = REGION / CHUNK
const seconds = Number(process.argv[2] ?? 4)

type Db = ClassicLevel<Buffer, Buffer>

async function open(dir: string, extra: object = {}): Promise<Db> {
  const db = new ClassicLevel<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer', ...STORE_OPTIONS, ...extra } as never)
  await db.open()
  return db
}

async function fill(db: Db): Promise<void> {
  const data = randomBytes(128 * 1024)
  for (let c = 0; c < CHUNKS; c += 32) {
    await db.batch(Array.from({ length: 32 }, (_, i) => ({ type: 'put' as const, key: dataKey(c + i), value: data.subarray(i * CHUNK, (i + 1) * CHUNK) })))
  }
  await db.compactRange(dataKey(0), dataKey(CHUNKS))
}

/** Runs `op` back to back (queue depth 1) for `seconds`; returns µs per op and MB/s. */
async function qd1(bytesPerOp: number, op: (i: number) => Promise<unknown>): Promise<string> {
  let n = 0
  const t0 = performance.now()
  while (performance.now() - t0 < seconds * 1000) await op(n++)
  const ms = performance.now() - t0
  return `${((1000 * ms) / n).toFixed(0)} µs/op, ${((n * bytesPerOp) / ms / 1000).toFixed(0)} MB/s`
}

function keys(first: number, count: number): Buffer[] {
  return Array.from({ length: count }, (_, i) => dataKey(first + i))
}

async function scan(db: Db, first: number, count: number): Promise<void> {
  const it = db.iterator({ gte: dataKey(first), lt: dataKey(first + count), highWaterMarkBytes: (count + 1) * CHUNK * 2 } as never)
  await it.nextv(count)
  it.close().catch(() => {})
}

/** Writes `gib` GiB of 128 KiB unlogged runs, 1 MiB to each store in turn, over 256 MiB per store. */
async function ingest(dbs: Db[], gib: number): Promise<string> {
  const data = randomBytes(32 * CHUNK)
  const present = Buffer.alloc(32, 1)
  const runs = (gib * 1024 * 1024 * 1024) / data.length
  let next = 0
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const writer = async (): Promise<void> => {
    while (next < runs) {
      const n = next++
      const first = ((Math.floor(n / (8 * dbs.length)) * 8 + (n % 8)) * 32) % CHUNKS
      const pcas = Array.from({ length: 32 }, (_, i) => first + i)
      await writeChunkRun(dbs[Math.floor(n / 8) % dbs.length]!, pcas, data, present, { unlogged: true })
    }
  }
  await Promise.all([writer(), writer(), writer(), writer()])
  const ms = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  return `${((gib * 1073.741824) / (ms / 1000)).toFixed(0)} MB/s, ${((cpu.user + cpu.system) / 1e6 / gib).toFixed(2)} CPU-s per GiB (system ${(cpu.system / 1e6 / gib).toFixed(2)})`
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vvfs-leveldb-'))
  try {
    // Runs on this machine land in two modes, 1.2-1.5 or 3.0-3.7 CPU-s per
    // GiB (system time, from run to run, in this process or a fresh one):
    // compare builds by alternating runs, not by one figure.
    for (let round = 1; round <= 3; round++) {
      const dbs = await Promise.all([0, 1, 2].map((k) => open(join(dir, `ingest-${round}-${k}`))))
      console.log(`unlogged ingest of 2 GiB into three stores, 4 in flight (${round}/3): ${await ingest(dbs, 2)}`)
      await Promise.all(dbs.map((d) => d.close()))
      await Promise.all([0, 1, 2].map((k) => rm(join(dir, `ingest-${round}-${k}`), { recursive: true, force: true })))
    }
    const db = await open(join(dir, 'read'))
    await fill(db)
    const at = (i: number, run: number) => ((i * run) % (CHUNKS - run)) | 0
    console.log(`128 KiB at queue depth 1, getMany(32):      ${await qd1(32 * CHUNK, (i) => db.getMany(keys(at(i, 32), 32)))}`)
    console.log(`128 KiB at queue depth 1, range iterator:   ${await qd1(32 * CHUNK, (i) => scan(db, at(i, 32), 32))}`)
    console.log(`1 MiB at queue depth 1, getMany(256):       ${await qd1(256 * CHUNK, (i) => db.getMany(keys(at(i, 256), 256)))}`)
    console.log(`1 MiB at queue depth 1, range iterator:     ${await qd1(256 * CHUNK, (i) => scan(db, at(i, 256), 256))}`)
    await db.close()
    const data = randomBytes(128 * 1024)
    for (const mib of [8, 32, 128]) {
      const w = await open(join(dir, `write-${mib}`), { writeBufferSize: mib * 1024 * 1024 })
      const r = await qd1(32 * CHUNK, (i) =>
        w.batch(Array.from({ length: 32 }, (_, k) => ({ type: 'put' as const, key: dataKey(((i * 32) % CHUNKS) + k), value: data.subarray(k * CHUNK, (k + 1) * CHUNK) }))),
      )
      console.log(`overwrite 128 KiB batches, ${String(mib).padStart(3)} MiB write buffer: ${r}`)
      await w.close()
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

await main()
