// Chunks spread over STEPS compaction steps (COMPACT_STEP_CHUNKS apart),
// RUN consecutive ones each, in version v: each chunk's bytes say its
// address and version (test/storage/compaction.test.ts, compaction-killer.mjs).
import { COMPACT_STEP_CHUNKS } from '../../dist/lib/storage/level-store.js'

export const STEPS = 6
export const RUN = 64

export function spreadChunk(pca, v) {
  const data = Buffer.alloc(4096, v)
  data.writeUInt32LE(pca, 0)
  return data
}

export function spreadChunks(v) {
  const out = []
  for (let s = 0; s < STEPS; s++) for (let j = 0; j < RUN; j++) {
    const pca = s * COMPACT_STEP_CHUNKS + j
    out.push({ pca, data: spreadChunk(pca, v) })
  }
  return out
}
