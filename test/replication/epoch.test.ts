import { describe, expect, it } from 'vitest'
import { VvfsError } from '../../lib/errors.js'
import {
  adoptChain,
  admit,
  compareHistories,
  genesis,
  handoff,
  validateChain,
  type Admission,
  type EpochChain,
  type EpochRecord,
  type Sender,
} from '../../lib/replication/epoch.js'
import { rng } from '../helpers/model.js'

const A = 'storage-a'
const B = 'storage-b'
const C = 'storage-c'

function reasonOf(a: Admission): string {
  if (a.verdict !== 'refuse') return a.verdict
  return String(a.error.details?.reason)
}

function thrown(fn: () => unknown): VvfsError {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(VvfsError)
    return err as VvfsError
  }
  throw new Error('expected a VvfsError')
}

describe('epoch records (claims 1–7)', () => {
  it('a handoff gives the new home the number one past the old home newest (claim 7) and names its predecessor', () => {
    const chain = [genesis(A)]
    const r = handoff(chain, B, 100)
    expect(r).toEqual({ epoch: 2, home: B, firstSeq: 101, predecessor: { epoch: 1, home: A, lastSeq: 100 } })
    validateChain([...chain, r])
    // A home that never numbered anything hands over too (lastSeq = firstSeq − 1).
    expect(handoff([...chain, r], C, 100).firstSeq).toBe(101)
  })

  it('a chain with a gap, an overlap, a skipped epoch or a wrong predecessor is invalid', () => {
    const good: EpochChain = [genesis(A), handoff([genesis(A)], B, 100)]
    const variants: EpochRecord[][] = [
      [good[0], { ...good[1], firstSeq: 102 }], // gap
      [good[0], { ...good[1], firstSeq: 100 }], // overlap: B from 100 while A numbered through 100
      [{ ...good[0], firstSeq: 50 }, { ...good[1], predecessor: { epoch: 1, home: A, lastSeq: 40 }, firstSeq: 41 }], // A ends before it starts
      [good[0], { ...good[1], epoch: 3, predecessor: { epoch: 1, home: A, lastSeq: 100 } }], // skipped epoch
      [good[0], { ...good[1], predecessor: { epoch: 1, home: C, lastSeq: 100 } }], // wrong home
      [good[0], { ...good[1], predecessor: null }],
      [{ ...good[0], predecessor: { epoch: 0, home: C, lastSeq: 0 } }],
      [],
    ]
    for (const v of variants) expect(thrown(() => validateChain(v)).details?.reason).toBe('invalid-chain')
    expect(() => handoff(good, C, 50)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' })) // B starts at 101
  })
})

describe('the secondary admits entries by the chain', () => {
  const chain: EpochChain = [genesis(A), handoff([genesis(A)], B, 100)]
  const fromA: Sender = { epoch: 1, home: A }
  const fromB: Sender = { epoch: 2, home: B }

  it('applies the next number from the epoch that owns it, from A up to its last and from B after', () => {
    expect(admit(chain, 99, fromA, { epoch: 1, seq: 100 })).toEqual({ verdict: 'apply' })
    expect(admit(chain, 100, fromB, { epoch: 2, seq: 101 })).toEqual({ verdict: 'apply' })
  })

  it("refuses anything from A at or past B's first number", () => {
    const a = admit(chain, 100, fromA, { epoch: 1, seq: 101 })
    expect(reasonOf(a)).toBe('stale-epoch')
    expect(a.verdict === 'refuse' && a.error.code).toBe('EPOCH_STALE')
    expect(reasonOf(admit(chain, 150, fromA, { epoch: 1, seq: 120 }))).toBe('stale-epoch') // even below applied: not a duplicate
  })

  it("refuses B's entries below its first number, and entries stamped with an epoch newer than their sender's", () => {
    expect(reasonOf(admit(chain, 99, fromB, { epoch: 2, seq: 100 }))).toBe('before-epoch')
    expect(reasonOf(admit(chain, 100, fromA, { epoch: 2, seq: 101 }))).toBe('from-a-later-epoch')
  })

  it("lets B relay A's pending entries (claims 4–5)", () => {
    expect(admit(chain, 80, fromB, { epoch: 1, seq: 81 })).toEqual({ verdict: 'apply' })
  })

  it('refuses a sender whose epoch it does not know, or who is not that epoch home', () => {
    expect(reasonOf(admit([genesis(A)], 100, fromB, { epoch: 2, seq: 101 }))).toBe('unknown-epoch')
    expect(reasonOf(admit(chain, 100, { epoch: 2, home: C }, { epoch: 2, seq: 101 }))).toBe('wrong-home')
  })

  it('acknowledges a replayed old number without applying it, and refuses a gap naming the next number', () => {
    expect(admit(chain, 120, fromB, { epoch: 2, seq: 110 })).toEqual({ verdict: 'duplicate' })
    expect(admit(chain, 120, fromA, { epoch: 1, seq: 7 })).toEqual({ verdict: 'duplicate' })
    const gap = admit(chain, 120, fromB, { epoch: 2, seq: 122 })
    expect(gap.verdict === 'refuse' && gap.error.toWire()).toMatchObject({ code: 'REPLICATION_GAP', details: { reason: 'gap', expected: 121 } })
  })
})

describe('split-brain is detected from the epoch chains', () => {
  const one = [genesis(A)]
  it('an orderly demote/promote leaves both sides the same, then the old primary behind — never split', () => {
    // The primary demoted after shipping everything through 500; the secondary promoted from 501.
    const promoted = [...one, handoff(one, 'secondary', 500)]
    expect(compareHistories({ chain: one, lastSeq: 500 }, { chain: promoted, lastSeq: 500 }).relation).toBe('same')
    expect(compareHistories({ chain: one, lastSeq: 500 }, { chain: promoted, lastSeq: 530 })).toEqual({ relation: 'a-behind', commonSeq: 500, commonEpoch: 1 })
  })

  it('a secondary that lags is behind, in the same epoch or across a migration', () => {
    const migrated = [...one, handoff(one, B, 100)]
    expect(compareHistories({ chain: migrated, lastSeq: 300 }, { chain: one, lastSeq: 80 }).relation).toBe('b-behind')
    expect(compareHistories({ chain: migrated, lastSeq: 300 }, { chain: migrated, lastSeq: 250 }).relation).toBe('b-behind')
  })

  it('a forced promote with writes on both sides is split-brain, at the number where they parted', () => {
    const forced = [...one, handoff(one, 'secondary', 420)]
    expect(compareHistories({ chain: one, lastSeq: 500 }, { chain: forced, lastSeq: 450 })).toEqual({ relation: 'split-brain', commonSeq: 420, commonEpoch: 1 })
    // Two forced promotes from one epoch: chains that differ in epoch 2.
    const other = [...one, handoff(one, C, 410)]
    expect(compareHistories({ chain: forced, lastSeq: 430 }, { chain: other, lastSeq: 415 })).toMatchObject({ relation: 'split-brain', commonSeq: 410 })
  })

  it('a forced promote with no write on the promoted side leaves it behind, not split', () => {
    const forced = [...one, handoff(one, 'secondary', 420)]
    expect(compareHistories({ chain: one, lastSeq: 500 }, { chain: forced, lastSeq: 420 }).relation).toBe('b-behind')
  })

  it('a secondary adopts a chain that extends its own, keeps its own against an older one, and refuses a conflicting one', () => {
    const migrated = [...one, handoff(one, B, 100)]
    expect(adoptChain(one, migrated, 90)).toBe(migrated)
    expect(adoptChain(migrated, one, 120)).toBe(migrated)
    const other = [...one, handoff(one, C, 100)]
    expect(thrown(() => adoptChain(migrated, other, 120)).details?.reason).toBe('split-brain')
    // The secondary applied A's entries through 120, but the handoff says A ended at 100.
    expect(thrown(() => adoptChain(one, migrated, 120)).details?.reason).toBe('split-brain')
  })
})

describe('model: A and B ship in random interleavings while the primary migrates', () => {
  interface Entry {
    seq: number
    epoch: number
    tag: string
  }

  it('the secondary applies 1..N in one order, every entry from the home that numbered it, and nothing stale', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed)
      const N = r.int(1, 60)
      const L = r.int(0, N) // A numbered 1..L, then B took over
      const chain = [genesis(A), handoff([genesis(A)], B, L)]
      const truth: Entry[] = Array.from({ length: N }, (_, i) => ({ seq: i + 1, epoch: i < L ? 1 : 2, tag: i < L ? `A${i + 1}` : `B${i + 1}` }))
      // A zombie A that kept numbering after the switch: must never be applied.
      const zombies: Entry[] = Array.from({ length: r.int(0, 5) }, (_, i) => ({ seq: L + 1 + i, epoch: 1, tag: `zombie${L + 1 + i}` }))
      let known: EpochChain = [genesis(A)]
      let applied = 0
      const image: Entry[] = []
      // Each shipper resends from its last acknowledgement (possibly stale), in random batches.
      const aHolds = [...truth.slice(0, L), ...zombies]
      const bHolds = truth // B took over A's pending entries too (claim 1: the management information)
      const cursor = { A: 1, B: 1 }
      let bSaidHello = false
      for (let step = 0; step < 2000 && applied < N; step++) {
        const who = r.next() < 0.5 ? 'A' : 'B'
        if (who === 'B' && !bSaidHello) {
          known = adoptChain(known, chain, applied)
          bSaidHello = true
          continue
        }
        const holds = who === 'A' ? aHolds : bHolds
        const sender: Sender = who === 'A' ? { epoch: 1, home: A } : { epoch: 2, home: B }
        // Zombies go out only once the secondary knows the handoff (it learns it from B's hello before B ships past L).
        const from = r.next() < 0.2 ? r.int(1, N) : cursor[who]
        const batch = holds.filter((e) => e.seq >= from && (bSaidHello || !e.tag.startsWith('zombie'))).slice(0, r.int(1, 6))
        for (const e of batch) {
          const verdict = admit(known, applied, sender, e)
          if (verdict.verdict === 'apply') {
            image.push(e)
            applied = e.seq
          } else if (verdict.verdict === 'refuse') {
            expect(['gap', 'stale-epoch']).toContain(verdict.error.details?.reason)
            break
          }
        }
        cursor[who] = applied + 1
        // Invariant 5 at every step: the image is exactly entries 1..m of the true history.
        expect(image).toEqual(truth.slice(0, applied))
      }
      expect(applied, `seed ${seed}`).toBe(N)
    }
  })
})
