// The chunk runs table-writer.mjs writes and the storage test reads back:
// lengths that make tables under, around and over the 1 MiB O_DIRECT buffer.
import { createHash } from 'node:crypto'

export const TABLE_RUNS = [1, 37, 300, 700].map((chunks, r) => ({ first: r * 1000, chunks }))

/** The run's data: chunk i is a hash of (first, i) repeated, never zero. */
export function tableRunData(run) {
  const data = Buffer.alloc(run.chunks * 4096)
  for (let i = 0; i < run.chunks; i++) {
    const h = createHash('sha256').update(`${run.first}:${i}`).digest()
    for (let o = 0; o < 4096; o += h.length) h.copy(data, i * 4096 + o)
  }
  return data
}
