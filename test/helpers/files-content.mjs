// File contents a writer can log as a seed and a checker can regenerate: an
// AES-128-CTR keystream under the seed (16 bytes, hex), so every 16-byte
// block of every file differs from every other file's.
import { createCipheriv } from 'node:crypto'

/** `length` bytes determined by `seed` (32 hex digits). */
export function contentOf(seed, length) {
  const key = Buffer.from(seed, 'hex')
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length))
}
