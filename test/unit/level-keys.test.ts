/**
 * A chunk's LevelDB key is 'd' and its address as 6 big-endian bytes: the
 * keys a store wrote before the byte-by-byte encoder must still be found.
 */
import { describe, expect, it } from 'vitest'
import { MAX_PCA } from '../../lib/storage/chunk-store.js'
import { dataKey, pcaOfKey } from '../../lib/storage/level-store.js'

function reference(pca: number): Buffer {
  const key = Buffer.alloc(7)
  key[0] = 0x64
  key.writeUIntBE(pca, 1, 6)
  return key
}

describe('chunk keys', () => {
  it('are the address in 6 big-endian bytes after "d", across the whole address space', () => {
    const pcas = [0, 1, 255, 256, 65_535, 2 ** 24 + 7, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 12_345, 2 ** 47, MAX_PCA - 1]
    for (let i = 0; i < 2000; i++) pcas.push(Math.floor(Math.random() * MAX_PCA))
    for (const pca of pcas) {
      expect(dataKey(pca).equals(reference(pca)), `pca ${pca}`).toBe(true)
      expect(pcaOfKey(dataKey(pca))).toBe(pca)
    }
  })
})
