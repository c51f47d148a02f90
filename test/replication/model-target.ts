/**
 * The secondary's side in memory, for model tests: an ApplyTarget whose
 * images are VolumeModels and whose batches are atomic and become durable
 * when their sync completes (next turn, or when released); powerCut() leaves
 * exactly the synced batches, like MemoryDurableLog on the primary's side.
 * Also the one function that applies a change to a VolumeModel (the
 * primary's model images use it too).
 */
import type { ApplyTarget, SecondaryState, TargetChange } from '../../lib/replication/applier.js'
import { VolumeModel } from '../helpers/model.js'

export function applyChange(images: Map<number, VolumeModel>, c: TargetChange): void {
  let image = images.get(c.volume)
  if (!image) images.set(c.volume, (image = new VolumeModel(0)))
  switch (c.kind) {
    case 'write':
      image.write(c.offset, c.data as Buffer)
      return
    case 'discard':
    case 'zero':
    case 'release':
      image.discard(c.offset, c.length)
      return
    case 'resize':
      image.resize(c.length)
      return
    case 'flush':
      return
    default: {
      const never: never = c.kind
      throw new Error(`unknown kind ${String(never)}`)
    }
  }
}

interface Durable {
  state: SecondaryState | null
  images: Map<number, Buffer>
}

export class MemoryApplyTarget implements ApplyTarget {
  private durable: Durable = { state: null, images: new Map() }
  private pending: { changes: TargetChange[]; state: SecondaryState; resolve: () => void }[] = []
  private holding = false
  private failures = 0
  private loadsFail = false
  batches = 0

  hold(): void {
    this.holding = true
  }

  release(): void {
    this.holding = false
    this.settle()
  }

  failNext(): void {
    this.failures++
  }

  /** From now on load() rejects (a store that failed for good, as ReplicaStore after a failed commit). */
  failLoads(): void {
    this.loadsFail = true
  }

  powerCut(): this {
    this.pending = []
    this.holding = false
    return this
  }

  async load(): Promise<SecondaryState | null> {
    if (this.loadsFail) throw new Error('injected load failure: the store failed for good')
    return this.durable.state ? structuredClone(this.durable.state) : null
  }

  apply(changes: TargetChange[], state: SecondaryState): Promise<void> {
    if (this.failures > 0) {
      this.failures--
      return Promise.reject(new Error('injected apply failure'))
    }
    return new Promise((resolve) => {
      this.pending.push({ changes, state: structuredClone(state), resolve })
      if (!this.holding) setImmediate(() => this.settle())
    })
  }

  /** The durable images. */
  images(): Map<number, Buffer> {
    return new Map([...this.durable.images].map(([v, b]) => [v, Buffer.from(b)]))
  }

  /** One durable image, not copied (do not change it). */
  image(volume: number): Buffer | undefined {
    return this.durable.images.get(volume)
  }

  get state(): SecondaryState | null {
    return this.durable.state
  }

  private settle(): void {
    if (this.holding) return
    for (const p of this.pending.splice(0)) {
      // Copy on write: only the images this batch changes are copied (a durable image is never changed in place).
      const touched = new Set(p.changes.map((c) => c.volume))
      const models = new Map([...touched].map((v) => [v, Object.assign(new VolumeModel(0), { data: Buffer.from(this.durable.images.get(v) ?? Buffer.alloc(0)) })]))
      for (const c of p.changes) applyChange(models, c)
      const images = new Map(this.durable.images)
      for (const [v, m] of models) images.set(v, m.data)
      this.durable = { state: p.state, images }
      this.batches++
      p.resolve()
    }
  }
}
