// Makes LevelDB switch memtables under logged writes, then makes one sync
// write and dies by SIGKILL, with VVFS_LEVELDB_TRACE_SYNC set by the caller
// (patches/: classic-level reports every synced file on stderr). Prints the
// name of the log the logged writes went to on stdout first.
// Usage: node log-switch-writer.mjs DIR
import { readdirSync, writeSync } from 'node:fs'
import { ClassicLevel } from 'classic-level'

const [dir] = process.argv.slice(2)
const logs = () => readdirSync(dir).filter((f) => f.endsWith('.log')).sort()
// A 256 KiB memtable: a switch after ~64 writes of 4 KiB.
const db = new ClassicLevel(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer', writeBufferSize: 256 * 1024 })
await db.open()
const [oldLog] = logs()
const value = Buffer.alloc(4096, 7)
for (let i = 0; logs().includes(oldLog); i++) {
  if (i > 10_000) throw new Error('the memtable never switched')
  const key = Buffer.alloc(4)
  key.writeUInt32BE(i)
  // Logged, not synced: like vvfs's 4 KiB random writes and map records.
  await db.put(key, value)
  // Stop at the switch: the old log may be gone already once its table is written.
  if (logs().some((f) => f !== oldLog)) break
}
writeSync(1, `${oldLog}\n`)
// An fsync: LevelDB syncs the log it writes to now.
await db.put(Buffer.from('sync'), Buffer.from('1'), { sync: true })
writeSync(2, 'synced\n')
process.kill(process.pid, 'SIGKILL')
