// Deterministic content of write number `id` (shared by the crash writer and its checker).
import { createHash } from 'node:crypto'

export function blockData(id, length) {
  const out = Buffer.alloc(length)
  let h = createHash('sha256').update(String(id)).digest()
  for (let o = 0; o < length; o += h.length) {
    h.copy(out, o)
    h = createHash('sha256').update(h).digest()
  }
  return out
}
