/**
 * Write-behind in Volume: a write is answered once the layers below accept
 * it, before it is stored. These tests hold the store back with a gate and
 * check what the host may see meanwhile.
 */
import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import { CHUNK_SIZE } from '../../lib/layout.js'
import { acceptance, type Acceptance, type ChunkLayer, type Write } from '../../lib/relay/chunk-layer.js'
import { Volume } from '../../lib/relay/volume.js'

/** A chunk store whose writes are accepted at once and stored when the gate opens (or fail, if told). */
class GatedStore implements ChunkLayer {
  readonly chunks = new Map<number, Buffer>()
  private gate: Promise<void> = Promise.resolve()
  private openGate: () => void = () => {}
  failAfterAccept: VvfsError | null = null
  failBeforeAccept: VvfsError | null = null
  stored = 0

  close(): void {
    this.gate = new Promise((resolve) => (this.openGate = resolve))
  }

  open(): void {
    this.openGate()
  }

  async read(first: number, count: number, into: Buffer): Promise<void> {
    for (let i = 0; i < count; i++) {
      const c = this.chunks.get(first + i)
      if (c) c.copy(into, i * CHUNK_SIZE)
      else into.fill(0, i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)
    }
  }

  write(first: number, data: Buffer): Write {
    const acceptor = acceptance()
    return { accepted: acceptor.accepted, stored: this.store(first, data, acceptor) }
  }

  private async store(first: number, data: Buffer, acceptor: Acceptance): Promise<void> {
    if (this.failBeforeAccept) {
      await this.gate
      acceptor.refuse(this.failBeforeAccept)
      throw this.failBeforeAccept
    }
    acceptor.accept()
    // Keep only the caller's buffer until the gate opens, as LevelDB's batch would not.
    const held = data
    await this.gate
    if (this.failAfterAccept) throw this.failAfterAccept
    for (let i = 0; i < held.length / CHUNK_SIZE; i++) this.chunks.set(first + i, Buffer.from(held.subarray(i * CHUNK_SIZE, (i + 1) * CHUNK_SIZE)))
    this.stored++
  }

  async discard(): Promise<void> {}
  async truncate(): Promise<void> {}
  async flush(): Promise<void> {}
}

const settledWithin = async (p: Promise<unknown>, ms = 50): Promise<boolean> =>
  Promise.race([p.then(() => true, () => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))])

describe('write-behind', () => {
  it('answers a write before it is stored, and a read of its chunks waits for it and sees it', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20)
    store.close()
    const data = Buffer.alloc(2 * CHUNK_SIZE, 7)
    expect(await volume.write(CHUNK_SIZE, data)).toBe(data.length)
    expect(store.stored).toBe(0)
    const into = Buffer.alloc(3 * CHUNK_SIZE)
    const read = volume.read(0, 3 * CHUNK_SIZE, into)
    expect(await settledWithin(read)).toBe(false)
    store.open()
    await read
    expect(into.subarray(CHUNK_SIZE).equals(data)).toBe(true)
  })

  it('keeps its own copy: the host may reuse its buffer once the write is answered', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20)
    store.close()
    const data = Buffer.alloc(CHUNK_SIZE, 1)
    await volume.write(0, data)
    data.fill(2)
    store.open()
    await volume.drain()
    expect(store.chunks.get(0)!.equals(Buffer.alloc(CHUNK_SIZE, 1))).toBe(true)
  })

  it('answers no more than its bound ahead of storage', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20, undefined, 4 * CHUNK_SIZE)
    store.close()
    const answered: boolean[] = []
    const writes = Array.from({ length: 6 }, (_, i) => volume.write(i * CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, i + 1)).then(() => (answered[i] = true)))
    await new Promise((r) => setTimeout(r, 30))
    expect(answered.filter(Boolean).length).toBe(4)
    store.open()
    await Promise.all(writes)
    expect(store.stored).toBe(6)
  })

  it('makes flush wait for every answered write', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20)
    store.close()
    for (let i = 0; i < 5; i++) await volume.write(i * CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, 1))
    const flush = volume.flush()
    expect(await settledWithin(flush)).toBe(false)
    store.open()
    await flush
    expect(store.stored).toBe(5)
  })

  it('reports a write that failed after it was answered at the next flush, once', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20)
    store.close()
    store.failAfterAccept = new VvfsError('IO_ERROR', 'disk gone')
    await volume.write(0, Buffer.alloc(CHUNK_SIZE, 1))
    store.open()
    await expect(volume.flush()).rejects.toMatchObject({ code: 'IO_ERROR' })
    store.failAfterAccept = null
    await expect(volume.flush()).resolves.toBeUndefined()
  })

  it('a failed background write is reported to every file description open when it failed, once each — not only to whoever flushes first', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20)
    const writer = volume.errorCursor()
    const reader = volume.errorCursor()
    store.close()
    store.failAfterAccept = new VvfsError('IO_ERROR', 'disk gone')
    await volume.write(0, Buffer.alloc(CHUNK_SIZE, 1))
    store.open()
    // A read-only open closes first (blkid, md5sum): it learns of the failure...
    await expect(volume.drain(reader)).rejects.toMatchObject({ code: 'IO_ERROR' })
    // ...and the writer's fsync still does, once.
    await expect(volume.flush(writer)).rejects.toMatchObject({ code: 'IO_ERROR' })
    await expect(volume.flush(writer)).resolves.toBeUndefined()
    await expect(volume.drain(reader)).resolves.toBeUndefined()
    // A file opened after the failure is not told of it.
    await expect(volume.flush(volume.errorCursor())).resolves.toBeUndefined()
    // A later failure reaches both again.
    store.failAfterAccept = new VvfsError('IO_ERROR', 'disk gone again')
    await volume.write(CHUNK_SIZE, Buffer.alloc(CHUNK_SIZE, 2))
    await expect(volume.flush(writer)).rejects.toThrow('disk gone again')
    await expect(volume.drain(reader)).rejects.toThrow('disk gone again')
  })

  it('fails the writer itself when the write is refused before it is accepted (a full pool), and not a flush meanwhile', async () => {
    const store = new GatedStore()
    const volume = new Volume(store, 1 << 20)
    store.failBeforeAccept = new VvfsError('POOL_FULL', 'no space')
    store.close()
    const write = volume.write(0, Buffer.alloc(CHUNK_SIZE, 1))
    const flush = volume.flush()
    store.open()
    await expect(write).rejects.toMatchObject({ code: 'POOL_FULL' })
    await expect(flush).resolves.toBeUndefined()
  })
})
