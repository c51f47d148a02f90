/**
 * Failover's peer messages and changed-extent record (issue 13.7): every
 * malformed body is refused with a code (PEER_PROTOCOL, FRAME_TOO_LARGE),
 * chains are validated; the extents a side changed past a number are those
 * of its journal's later entries plus its dirty marks.
 */
import { describe, expect, it } from 'vitest'
import { EXTENT_SIZE } from '../../lib/layout.js'
import { MemoryDurableLog, SIZE_MARK } from '../../lib/replication/durable-log.js'
import { genesis, handoff } from '../../lib/replication/epoch.js'
import { changedSince } from '../../lib/replication/failover.js'
import { HistoryMessage, HistoryReplyMessage, RemarkMessage, TakeOverMessage } from '../../lib/replication/failover-messages.js'
import { Journal } from '../../lib/replication/journal.js'
import { MAX_MESSAGE_BYTES } from '../../lib/replication/messages.js'

const chain = [genesis('a1'), handoff([genesis('a1')], 'b1@promote-e2', 10)]

describe('failover messages', () => {
  it('round-trip history, take-over and remark bodies', () => {
    const h = { format: 1 as const, pair: 'db', side: { role: 'promoted' as const, chain, lastSeq: 12, listen: '127.0.0.1:7000' } }
    expect(HistoryMessage.decode(HistoryMessage.encode(h))).toEqual(h)
    expect(HistoryReplyMessage.decode(HistoryReplyMessage.encode({ format: 1, pair: 'db', side: null }))).toEqual({ format: 1, pair: 'db', side: null })
    const t = { format: 1 as const, pair: 'db', chain, commonSeq: 10, volume: { no: 4, size: 1 << 24 }, discard: false }
    expect(TakeOverMessage.decode(TakeOverMessage.encode(t))).toEqual(t)
    expect(RemarkMessage.decode(RemarkMessage.encode({ format: 1, pair: 'db', extents: [0, 3, SIZE_MARK] })).extents).toEqual([0, 3, SIZE_MARK])
  })

  it('refuse malformed bodies with PEER_PROTOCOL and oversized ones with FRAME_TOO_LARGE', () => {
    const bad = [
      Buffer.from('not json'),
      Buffer.from(JSON.stringify({ format: 1, pair: 'db' })),
      Buffer.from(JSON.stringify({ format: 1, pair: 'db', side: { role: 'king', chain, lastSeq: 1, listen: null } })),
      Buffer.from(JSON.stringify({ format: 1, pair: 'db', side: { role: 'primary', chain, lastSeq: -1, listen: null } })),
      Buffer.from(JSON.stringify({ format: 1, pair: 'db', side: { role: 'primary', chain, lastSeq: 1, listen: null }, extra: 1 })),
      // A chain whose second epoch does not start one past its predecessor's end.
      Buffer.from(JSON.stringify({ format: 1, pair: 'db', side: { role: 'primary', chain: [chain[0], { ...chain[1], firstSeq: 99 }], lastSeq: 1, listen: null } })),
      Buffer.from([0xff, 0xfe, 0x00]),
    ]
    for (const b of bad) expect(() => HistoryMessage.decode(b)).toThrow(expect.objectContaining({ code: 'PEER_PROTOCOL' }))
    expect(() => RemarkMessage.decode(Buffer.from(JSON.stringify({ format: 1, pair: 'db', extents: [-1] })))).toThrow(expect.objectContaining({ code: 'PEER_PROTOCOL' }))
    expect(() => TakeOverMessage.decode(Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x20))).toThrow(expect.objectContaining({ code: 'FRAME_TOO_LARGE' }))
  })
})

describe('changedSince', () => {
  it('is the extents of the entries after the number, and the dirty marks, for that volume only', async () => {
    const journal = await Journal.open(new MemoryDurableLog(), { epoch: 1 })
    const write = (volume: number, offset: number, length: number) => journal.append({ kind: 'write', volume, offset, data: Buffer.alloc(length, 1) }).durable
    await write(1, 0, 4096) // 1: before the number
    await write(1, 5 * EXTENT_SIZE, 4096) // 2: before the number
    await write(1, 2 * EXTENT_SIZE - 4096, 8192) // 3: spans extents 1 and 2
    await write(2, 7 * EXTENT_SIZE, 4096) // 4: another volume
    await journal.append({ kind: 'resize', volume: 1, size: 64 * EXTENT_SIZE }).durable // 5
    await journal.addMarks([{ volume: 1, extent: 9 }, { volume: 2, extent: 11 }])
    expect(await changedSince(journal, 1, 2)).toEqual([1, 2, 9, SIZE_MARK])
    expect(await changedSince(journal, 1, 5)).toEqual([9])
    expect(await changedSince(journal, 2, 0)).toEqual([7, 11])
  })
})
