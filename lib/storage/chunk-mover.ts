/**
 * ChunkMover: runs chunk copies between storage systems. `InlineChunkMover`
 * copies on the calling thread through the ChunkStore interface (readRun or
 * readMany, then apply), between any two stores. `WorkerChunkMover` copies
 * in a worker thread (worker_threads), so a migration's copy loop does not
 * compete with host I/O for the main thread, when both stores have a local
 * path the worker can open itself (classic-level's `multithreading: true`,
 * as the main thread does); otherwise (a memory or remote store, or a
 * system with a fault rule armed, whose FaultyStore offers no local path)
 * it copies inline.
 *
 * Errors cross the thread boundary as {code, message} and become VvfsErrors
 * again here. The inline mover is also the whole mover for in-process tests
 * and when no worker can start.
 *
 * Durability: a copy's writes are logged, not synced; once a copy has ended
 * (or failed) the mover reports them to the destination's StorageSystem
 * (wroteElsewhere), so its next sync covers them. The caller syncs the
 * destination before any record points at the copy (MigrationRunner).
 *
 * Injected faults (lib/storage/fault-injector.ts): an inline copy goes
 * through each system's FaultyStore, so each batch read checks the source's
 * read gate and each batch written the destination's write gate; the worker
 * never copies for a system with rules armed.
 */
import { Worker } from 'node:worker_threads'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { fromWire, VvfsError, type WireError } from '../errors.js'
import { copyChunks, type CopyRequest } from './chunk-copy.js'
import type { StorageSystem } from './storage-system.js'

export interface ChunkMover {
  copy(req: CopyRequest): Promise<number>
  /** Closes the mover's handle on a storage system (before the system is closed or removed). */
  forget(sid: number): Promise<void>
  close(): Promise<void>
}

export class InlineChunkMover implements ChunkMover {
  constructor(private readonly system: (sid: number) => StorageSystem) {}

  async copy(req: CopyRequest): Promise<number> {
    const to = this.system(req.toSid)
    return copyChunks(this.system(req.fromSid).chunkStore, to.chunkStore, req.fromPcas, req.toPcas, req.style).finally(() => to.wroteElsewhere())
  }

  async forget(): Promise<void> {}

  async close(): Promise<void> {}
}

interface Pending {
  resolve: (bytes: number) => void
  reject: (err: unknown) => void
}

export class WorkerChunkMover implements ChunkMover {
  private readonly worker: Worker
  private readonly pending = new Map<number, Pending>()
  private readonly opened = new Set<number>()
  private readonly inline: InlineChunkMover
  private nextId = 1
  private failed: VvfsError | null = null

  private constructor(
    file: string,
    private readonly system: (sid: number) => StorageSystem,
  ) {
    this.inline = new InlineChunkMover(system)
    this.worker = new Worker(file)
    this.worker.on('message', (msg: { id: number; bytes?: number; error?: WireError }) => {
      const p = this.pending.get(msg.id)
      if (!p) return
      this.pending.delete(msg.id)
      if (msg.error) p.reject(fromWire(msg.error))
      else p.resolve(msg.bytes ?? 0)
    })
    this.worker.on('error', (err) => this.failAll(new VvfsError('INTERNAL', `migration worker failed: ${err.message}`, { cause: err })))
    this.worker.on('exit', (code) => this.failAll(new VvfsError('INTERNAL', `migration worker exited (${code})`)))
    this.worker.unref()
  }

  /** A worker when the compiled worker file exists (the daemon), else inline. */
  static create(system: (sid: number) => StorageSystem): ChunkMover {
    const file = fileURLToPath(new URL('./chunk-mover-worker.js', import.meta.url))
    return existsSync(file) ? new WorkerChunkMover(file, system) : new InlineChunkMover(system)
  }

  async copy(req: CopyRequest): Promise<number> {
    const from = this.system(req.fromSid)
    const to = this.system(req.toSid)
    const paths = [from.chunkStore.capabilities.localPath, to.chunkStore.capabilities.localPath]
    if (paths[0] === null || paths[1] === null) return this.inline.copy(req)
    if (this.failed) throw this.failed
    for (const [i, s] of [from, to].entries()) {
      if (!this.opened.has(s.sid)) {
        this.worker.postMessage({ type: 'open', sid: s.sid, name: s.name, path: paths[i] })
        this.opened.add(s.sid)
      }
    }
    const id = this.nextId++
    return new Promise<number>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.worker.postMessage({ type: 'copy', id, req })
    }).finally(() => to.wroteElsewhere())
  }

  /**
   * Closes the worker's handle on a storage system and waits for it: the
   * worker shares the LevelDB instance, so removing a system's files while
   * the worker still holds it would pull them from under a live database.
   */
  async forget(sid: number): Promise<void> {
    if (!this.opened.delete(sid) || this.failed) return
    const id = this.nextId++
    await new Promise<number>((resolve, reject) => {
      this.pending.set(id, { resolve, reject })
      this.worker.postMessage({ type: 'close', sid, id })
    })
  }

  async close(): Promise<void> {
    this.worker.postMessage({ type: 'exit' })
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        void this.worker.terminate()
        resolve()
      }, 5000)
      this.worker.once('exit', () => {
        clearTimeout(t)
        resolve()
      })
    })
  }

  private failAll(err: VvfsError): void {
    this.failed = err
    for (const p of this.pending.values()) p.reject(err)
    this.pending.clear()
  }
}
