/**
 * FaultInjector: I/O-error injection into storage systems, for testing what
 * vvfs does when a disk under a store fails (as QEMU's blkdebug and nbdkit's
 * error and delay filters do for block devices). Only a daemon started with
 * `--allow-faults` has one.
 *
 * A rule names one storage system and an operation class: `read` (chunk
 * reads, scans for stored chunks), `write` (chunk writes, deletions, slot
 * clears), `sync` (a sync that has something to make durable) or `any`. Its
 * effect is an error — EIO (code IO_ERROR) or ENOSPC (code STORAGE_FULL) —
 * or a delay. `after N` lets the first N matching operations pass, `count N`
 * spends the rule after N injections, `probability P` injects on a draw from
 * the rule's own generator seeded with `seed`: the same seed and the same
 * sequence of operations give the same faults. Every injection is reported
 * (logged and evented by the manager).
 *
 * Shape: `StorageFaults` is the gate of one storage system — the check its
 * store's calls make at entry. Setting a target's `faults` to a gate wraps
 * the system's ChunkStore in a FaultyStore (faulty-store.ts: each method
 * checks, then delegates), setting it back to null unwraps it: a system
 * with no rule has no gate and nothing on its fast path. Migration copies
 * of a system with a gate run on the main thread, through the wrapper, so a
 * copy's every batch read and written is checked (chunk-mover.ts).
 *
 * Concurrency: all on the main thread; a check runs synchronously up to its
 * delay, so rule counters are updated in the order operations start.
 * Failure modes: none of its own; rules live in memory and are gone at a
 * restart (and cleared when the daemon stops, so shutdown can flush).
 */
import { VvfsError } from '../errors.js'

export const FAULT_OPS = ['read', 'write', 'sync', 'any'] as const
export type FaultOp = (typeof FAULT_OPS)[number]
export type StorageOp = Exclude<FaultOp, 'any'>
export const FAULT_EFFECTS = ['EIO', 'ENOSPC', 'delay'] as const
export type FaultEffect = (typeof FAULT_EFFECTS)[number]

/** A delay when none is given (`--error delay` alone): long enough to see, short of any timeout. */
export const DEFAULT_DELAY_MS = 200
/** The longest delay: FUSE answers ETIMEDOUT for I/O after 120 s; a delay stays well inside it. */
export const MAX_DELAY_MS = 60_000

export interface FaultSpec {
  op: FaultOp
  error: FaultEffect
  delayMs?: number
  probability?: number
  after?: number
  count?: number
  seed?: number
}

export interface FaultInfo {
  id: number
  storage: string
  op: FaultOp
  error: FaultEffect
  delayMs: number
  probability: number
  after: number
  count: number | null
  seed: number
  /** Matching operations seen so far (the first `after` pass). */
  seen: number
  injected: number
  /** False once `count` injections are spent. */
  active: boolean
  createdAt: string
}

export interface InjectedFault {
  fault: number
  storage: string
  op: StorageOp
  error: FaultEffect
  delayMs?: number
}

/** What a storage system's operations call at entry. */
export interface FaultGate {
  /** Resolves (after an injected delay) or rejects with the injected error. */
  check(op: StorageOp): Promise<void>
}

/** What the injector needs of a storage system: its name and the slot for its gate (a StorageSystem wraps its store while it holds one). */
export interface FaultTarget {
  readonly sid: number
  readonly name: string
  faults: FaultGate | null
}

interface Rule {
  info: FaultInfo
  next: () => number
}

/** mulberry32: a small, fast, seedable generator of floats in [0, 1). */
function generator(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

class StorageFaults implements FaultGate {
  readonly rules: Rule[] = []

  constructor(
    private readonly storage: string,
    private readonly injected: (f: InjectedFault) => void,
  ) {}

  async check(op: StorageOp): Promise<void> {
    let delay = 0
    let failure: VvfsError | null = null
    for (const rule of this.rules) {
      const f = rule.info
      if (!f.active || (f.op !== op && f.op !== 'any')) continue
      f.seen++
      if (f.seen <= f.after) continue
      if (f.probability < 1 && rule.next() >= f.probability) continue
      f.injected++
      if (f.count !== null && f.injected >= f.count) f.active = false
      if (f.error === 'delay') {
        delay += f.delayMs
        this.injected({ fault: f.id, storage: this.storage, op, error: f.error, delayMs: f.delayMs })
        continue
      }
      this.injected({ fault: f.id, storage: this.storage, op, error: f.error })
      failure = injectedError(this.storage, op, f)
      break
    }
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay))
    if (failure) throw failure
  }
}

function injectedError(storage: string, op: StorageOp, f: FaultInfo): VvfsError {
  const details = { fault: f.id, storage, op }
  if (f.error === 'ENOSPC') return new VvfsError('STORAGE_FULL', `storage system ${storage}: ${op} failed: no space left on device (injected by fault ${f.id})`, { details })
  return new VvfsError('IO_ERROR', `storage system ${storage}: ${op} failed: input/output error (injected by fault ${f.id})`, { details })
}

export class FaultInjector {
  private readonly gates = new Map<number, { target: FaultTarget; gate: StorageFaults }>()
  private nextId = 1

  constructor(private readonly injected: (f: InjectedFault) => void) {}

  add(target: FaultTarget, spec: FaultSpec): FaultInfo {
    if (spec.error !== 'delay' && spec.delayMs !== undefined) throw new VvfsError('INVALID_ARGUMENT', 'a delay is only for --error delay')
    const delayMs = spec.error === 'delay' ? (spec.delayMs ?? DEFAULT_DELAY_MS) : 0
    if (delayMs > MAX_DELAY_MS) throw new VvfsError('INVALID_ARGUMENT', `a delay may be at most ${MAX_DELAY_MS / 1000}s`)
    const seed = spec.seed ?? Math.floor(Math.random() * 0x1_0000_0000)
    const info: FaultInfo = {
      id: this.nextId++,
      storage: target.name,
      op: spec.op,
      error: spec.error,
      delayMs,
      probability: spec.probability ?? 1,
      after: spec.after ?? 0,
      count: spec.count ?? null,
      seed,
      seen: 0,
      injected: 0,
      active: true,
      createdAt: new Date().toISOString(),
    }
    let entry = this.gates.get(target.sid)
    if (!entry) this.gates.set(target.sid, (entry = { target, gate: new StorageFaults(target.name, this.injected) }))
    entry.gate.rules.push({ info, next: generator(seed) })
    target.faults = entry.gate
    return { ...info }
  }

  list(): FaultInfo[] {
    return [...this.gates.values()].flatMap((e) => e.gate.rules.map((r) => ({ ...r.info }))).sort((a, b) => a.id - b.id)
  }

  /** Removes one rule, or all of them; returns the ids removed. */
  clear(id?: number): number[] {
    const cleared: number[] = []
    for (const [sid, { target, gate }] of this.gates) {
      for (let i = gate.rules.length - 1; i >= 0; i--) {
        const ruleId = gate.rules[i]!.info.id
        if (id !== undefined && ruleId !== id) continue
        gate.rules.splice(i, 1)
        cleared.push(ruleId)
      }
      if (gate.rules.length === 0) {
        this.gates.delete(sid)
        if (target.faults === gate) target.faults = null
      }
    }
    if (id !== undefined && cleared.length === 0) throw new VvfsError('FAULT_NOT_FOUND', `no fault with id ${id}`)
    return cleared.sort((a, b) => a - b)
  }

  /** Drops the rules of a storage system that is being removed. */
  forget(sid: number): void {
    const entry = this.gates.get(sid)
    if (!entry) return
    this.gates.delete(sid)
    if (entry.target.faults === entry.gate) entry.target.faults = null
  }
}
