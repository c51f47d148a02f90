/**
 * The replication endpoint: the secondary's request handlers on a peer-wire
 * server (service 'replication'), and the primary's calls on a wire client.
 * The daemon's `--listen` server registers these; the appliers are the
 * secondary's pairs (looked up by name per request: a pair stopped or
 * started between two requests is seen at the next one).
 *
 * Failure modes: a malformed body, an unknown pair, a refused hello throw
 * a coded VvfsError, which the wire server sends as an ERROR frame — the
 * connection stays, nothing changes. A refused batch is a normal Ack with
 * `refused` set (the primary needs the applied number with it to resume).
 * Every refusal is logged (`replication.refused`, pair, code, reason).
 */
import { VvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import type { WireClient } from '../wire/client.js'
import type { WireServer } from '../wire/server.js'
import type { Ack, Applier } from './applier.js'
import type { JournalEntry } from './entry.js'
import type { Sender } from './epoch.js'
import {
  decodeAck,
  decodeEntries,
  decodeHello,
  decodePairStatus,
  decodeResyncBegin,
  decodeResyncEnd,
  decodeResyncFlush,
  decodeStatusRequest,
  encodeAck,
  encodeResyncBegin,
  encodeResyncEnd,
  encodeResyncFlush,
  encodeEntriesParts,
  encodeHello,
  encodePairStatus,
  encodeStatusRequest,
  ReplicationRequest,
  type Hello,
  type PairStatus,
} from './messages.js'

export type PairLookup = (pair: string) => Applier | undefined
/** Creates a pair named by a CREATE (or finds it), answering its applier; absent: CREATE is refused. */
export type PairCreator = (h: Hello, peer: string) => Promise<Applier>

export function serveReplication(server: WireServer, pairs: PairLookup, log: Logger, create?: PairCreator): void {
  const applierOf = (pair: string): Applier => {
    const a = pairs(pair)
    if (!a) throw new VvfsError('VOLUME_NOT_FOUND', `no replication pair '${pair}' on this secondary`, { details: { reason: 'unknown-pair' } })
    return a
  }
  /** Runs a handler; what it refuses is logged with the pair it named (once decoded). */
  const logged = async <T>(peer: string, fn: (named: { pair: string }) => Promise<T>): Promise<T> => {
    const named = { pair: '?' }
    try {
      return await fn(named)
    } catch (err) {
      const e = err as VvfsError
      log.warn({ event: 'replication.refused', pair: named.pair, peer, code: e.code, reason: e.details?.reason, err: e.message }, 'replication request refused')
      throw err
    }
  }
  /** One request type: decode the body (it names the pair), run, encode the answer; refusals logged with the pair. */
  const route = <M extends { pair: string }>(type: number, decode: (b: Buffer) => M, run: (m: M, peer: string) => Promise<Buffer>) =>
    server.handle(type, (body, ctx) =>
      logged(ctx.peer, async (named) => {
        const m = decode(body)
        named.pair = m.pair
        return run(m, ctx.peer)
      }),
    )
  route(ReplicationRequest.HELLO, decodeHello, async (h) => encodeAck(await applierOf(h.pair).hello(h.sender, h.chain)))
  route(ReplicationRequest.ENTRIES, decodeEntries, async (batch, peer) => {
    const ack = await applierOf(batch.pair).receive(batch.sender, batch.entries)
    if (ack.refused)
      log.warn({ event: 'replication.refused', pair: batch.pair, peer, code: ack.refused.code, reason: ack.refused.details?.reason, err: ack.refused.message }, 'replication batch refused')
    return encodeAck(ack)
  })
  route(ReplicationRequest.CREATE, decodeHello, async (h, peer) => {
    if (!create) throw new VvfsError('NOT_SUPPORTED', 'this secondary does not create pairs')
    return encodeAck(await (await create(h, peer)).hello(h.sender, h.chain))
  })
  route(ReplicationRequest.RESYNC_BEGIN, decodeResyncBegin, async (r) => encodeAck(await applierOf(r.pair).beginResync(r.sender, r.baseSeq)))
  route(ReplicationRequest.RESYNC_DATA, decodeEntries, async (b) => encodeAck(await applierOf(b.pair).resyncData(b.sender, b.entries)))
  route(ReplicationRequest.RESYNC_FLUSH, decodeResyncFlush, async (r) => encodeAck(await applierOf(r.pair).resyncFlush(r.sender, r.incarnation)))
  route(ReplicationRequest.RESYNC_END, decodeResyncEnd, async (r) => encodeAck(await applierOf(r.pair).endResync(r.sender, r.consistentAt)))
  route(ReplicationRequest.STATUS, decodeStatusRequest, async (r) => {
    const s = applierOf(r.pair).status
    const status: PairStatus = { pair: r.pair, appliedSeq: s.appliedSeq, chain: [...s.chain], consistent: s.consistent, resyncing: s.resyncing, consistentAt: s.consistentAt }
    return encodePairStatus(status)
  })
}

/** The primary's side of one pair's stream over a connected wire client. */
export class ReplicationStream {
  constructor(
    private readonly client: WireClient,
    readonly pair: string,
    readonly sender: Sender,
  ) {}

  async hello(h: Omit<Hello, 'format' | 'pair' | 'sender'>): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.HELLO, encodeHello({ format: 1, pair: this.pair, sender: this.sender, ...h })))
  }

  /** Ships durable log records (as read from the journal's log, not re-encoded). */
  async ship(records: Buffer[]): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.ENTRIES, encodeEntriesParts({ pair: this.pair, sender: this.sender, records })))
  }

  /** Creates the pair on the secondary if new (its volumes read-only there); otherwise a hello. */
  async create(h: Omit<Hello, 'format' | 'pair' | 'sender'>): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.CREATE, encodeHello({ format: 1, pair: this.pair, sender: this.sender, ...h })))
  }

  async beginResync(baseSeq: number): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.RESYNC_BEGIN, encodeResyncBegin({ format: 1, pair: this.pair, sender: this.sender, baseSeq })))
  }

  /** Copied data (write or zero entries; their numbers are not used). */
  async resyncData(entries: JournalEntry[]): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.RESYNC_DATA, encodeEntriesParts({ pair: this.pair, sender: this.sender, entries })))
  }

  /** Makes the resync data answered by `incarnation` durable on the secondary (refused by another incarnation). */
  async resyncFlush(incarnation: string): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.RESYNC_FLUSH, encodeResyncFlush({ format: 1, pair: this.pair, sender: this.sender, incarnation })))
  }

  async endResync(consistentAt: number): Promise<Ack> {
    return decodeAck(await this.client.request(ReplicationRequest.RESYNC_END, encodeResyncEnd({ format: 1, pair: this.pair, sender: this.sender, consistentAt })))
  }

  async status(): Promise<PairStatus> {
    return decodePairStatus(await this.client.request(ReplicationRequest.STATUS, encodeStatusRequest({ format: 1, pair: this.pair })))
  }
}
