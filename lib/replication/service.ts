/**
 * Replication in a daemon (issue 13): both roles. As a primary, its pairs
 * are replication jobs (lib/jobs/replicate.ts) whose PrimaryPairs this
 * registry keeps by job id; as a secondary, SecondaryPairs (secondary.ts)
 * behind the peer listener (`vvfs daemon --listen ADDR:PORT --peer-key
 * FILE`, the peer wire's service 'replication'). The manager owns one and
 * calls it at start (open: the secondaries' redo, before the mounts) and at
 * stop (close: after the mounts, before the stores).
 *
 * Where a journal lives: STATE/journals/job-<id> for epoch 1, and
 * job-<id>.e<epoch> for each later epoch (a LevelDB each). When a migration
 * changes a replicated volume's home, `handoff` hands its journal over to
 * the new home (lib/replication/journal-chain.ts: a new epoch, its own log).
 * Why the logs stay in the state directory, not in the home storage
 * system's store: DESIGN.md, "Replication: where the journal lives".
 *
 * Failover (issue 13.7: promote, demote, reverse, split-brain) is
 * failover.ts's FailoverService: opened after the secondaries (it may drop a
 * promoted pair's store and attach its journal), serving its requests on the
 * same listener; a pair promoted here refuses its old primary's CREATE.
 *
 * Concurrency: control requests arrive through the manager's queue; the
 * listener's requests go to the pairs (each an Applier, one batch at a time).
 */
import { join } from 'node:path'
import type { ReplicationInfo } from '../control/schema.js'
import { VvfsError } from '../errors.js'
import type { ReplicationResources } from '../jobs/driver.js'
import type { Logger } from '../log.js'
import type { JobRecord, ReplicateJobRecord } from '../migration/job.js'
import type { JournalLayer } from './journal-layer.js'
import type { PrimaryPair } from './primary.js'
import { SecondaryPairs, type ReplicaHost } from './secondary.js'
import { serveReplication } from './endpoint.js'
import { REPLICATION_SERVICE } from './messages.js'
import { loadPeerKey } from '../wire/auth.js'
import { BufferPool } from '../buffer-pool.js'
import { parseHostPort, WireServer } from '../wire/server.js'
import { FailoverService, type FailoverHost } from './failover.js'
import { refusal } from './epoch.js'

/** Request bodies from this size on are received into reused buffers (smaller ones cost little: Node's own pool). */
const REUSED_BODY_MIN_BYTES = 64 * 1024
/** Idle reused bodies kept: eight of the largest ENTRIES message (MAX_MESSAGE_BYTES, 1 MiB). */
const REUSED_BODIES_IDLE_BYTES = 8 * 1024 * 1024

export interface ReplicationHost extends ReplicaHost, FailoverHost {
  journalLayer(volNo: number): JournalLayer | undefined
  volumeSize(volNo: number): number
  allocatedExtents(volNo: number): number[]
  home(volNo: number): string
  jobs(): readonly JobRecord[]
  emitState(body: { pair: string; volume: string; from: string; to: string; reason: string }): void
}

export class ReplicationService {
  readonly pairs = new Map<number, PrimaryPair>()

  /** Whether any pair runs here, in either role. */
  get active(): boolean {
    return this.pairs.size > 0 || this.secondaries.size > 0
  }
  readonly secondaries: SecondaryPairs
  readonly failover: FailoverService
  private listener: WireServer | null = null

  constructor(
    private readonly stateDir: string,
    private readonly host: ReplicationHost,
    private readonly log: Logger,
  ) {
    this.secondaries = new SecondaryPairs(join(stateDir, 'replication', 'secondary'), host, log)
    this.failover = new FailoverService(stateDir, host, this.secondaries, log)
  }

  /** What replication jobs get (lib/jobs/driver.ts). */
  resources(): ReplicationResources {
    const h = this.host
    return {
      journalLayer: (volNo) => h.journalLayer(volNo),
      volumeSize: (volNo) => h.volumeSize(volNo),
      allocatedExtents: (volNo) => h.allocatedExtents(volNo),
      journalDir: (jobId) => join(this.stateDir, 'journals', `job-${jobId}`),
      home: (volNo) => h.home(volNo),
      pairs: this.pairs,
      stateChanged: (body) => h.emitState(body),
      handoff: async (volNo) => {
        for (const p of this.pairs.values()) if (p.volNo === volNo) await p.followHome(h.home(volNo))
      },
    }
  }

  /** Opens the secondary pairs (their redo included), then failover's records: before the host mounts. */
  async open(): Promise<void> {
    await this.secondaries.open()
    await this.failover.open()
  }

  /** Serves the secondary's side at ADDR:PORT (peer wire, service 'replication'). */
  async listen(address: string, keyFile: string): Promise<{ host: string; port: number }> {
    const { host, port } = parseHostPort(address)
    const key = await loadPeerKey(keyFile)
    // Bodies of 64 KiB and more are received into reused buffers: no handler keeps its body past its answer
    // (the secondary's volumes copy what they are given; endpoint.ts).
    const requestBodies = new BufferPool(REUSED_BODY_MIN_BYTES, REUSED_BODIES_IDLE_BYTES)
    const server = new WireServer({ host, port, key, service: REPLICATION_SERVICE, log: this.log, requestBodies })
    serveReplication(server, (pair) => this.unlessPromoting(pair) && this.secondaries.lookup(pair), this.log, (h, peer) => {
      this.unlessPromoting(h.pair)
      const promoted = this.failover.promotedRecord(h.pair)
      if (promoted)
        throw refusal('stale-epoch', `pair ${h.pair} was promoted here: epoch ${promoted.chain[promoted.chain.length - 1]!.epoch} numbers from ${promoted.promotedAt + 1}`, { takenOverAt: promoted.promotedAt + 1 })
      return this.secondaries.create(h, peer)
    })
    this.failover.serve(server)
    const bound = await server.listen()
    this.listener = server
    this.failover.listening(`${bound.host}:${bound.port}`)
    this.log.info({ event: 'replication.listening', host: bound.host, port: bound.port }, `replication listener on ${bound.host}:${bound.port}`)
    return bound
  }

  /** Issue 13.6/13.7: while a pair is being promoted, its old primary's requests are refused (the promote reads the applied number the volumes hold). */
  private unlessPromoting(pair: string): true {
    if (this.failover.promoting(pair)) throw new VvfsError('FAILOVER_STATE', `pair ${pair} is being promoted here`, { details: { reason: 'promoting' } })
    return true
  }

  /** The replication job of a pair (primary side), if it runs here. */
  jobOf(pair: string): ReplicateJobRecord | undefined {
    return this.host.jobs().find((j): j is ReplicateJobRecord => j.kind === 'replicate' && j.pair === pair && j.status !== 'concluded')
  }

  /** The pair replicating volume `volNo` from here, if any. */
  pairOfVolume(volNo: number): string | undefined {
    return this.host.jobs().find((j): j is ReplicateJobRecord => j.kind === 'replicate' && j.status !== 'concluded' && j.volNos.includes(volNo))?.pair
  }

  /** Every pair this daemon takes part in, primary and secondary sides. */
  list(): ReplicationInfo[] {
    const out: ReplicationInfo[] = []
    for (const [jobId, p] of this.pairs) {
      const s = p.status()
      out.push({ ...s, role: 'primary', job: jobId, lastError: s.lastError ? { code: s.lastError.code, message: s.lastError.message } : null })
    }
    out.push(...this.failoverRows())
    for (const s of this.secondaries.list()) {
      out.push({
        pair: s.pair,
        role: 'secondary',
        job: null,
        volume: s.volumes.join(','),
        group: s.group,
        peer: s.peer,
        state: s.resyncing ? 'resyncing' : s.consistent ? 'consistent' : 'catching-up',
        link: 'up',
        epoch: s.epoch,
        lastWritten: 0,
        lastDurable: 0,
        lastShipped: 0,
        lastApplied: s.appliedSeq,
        consistent: s.consistent,
        lag: { entries: 0, bytes: 0, seconds: 0 },
        journal: { mode: 'none', usedBytes: 0, limitBytes: 0, entries: 0, dirtyExtents: 0 },
        rate: 0,
        sync: { copied: 0, total: 0 },
        lastError: null,
      })
    }
    // Issue 13.7: every row shows its failover view; a split-brain is the state.
    for (const row of out) {
      const view = this.failover.view(row.pair)
      if (!view) continue
      row.failover = view
      if (view.relation === 'split-brain') row.state = 'split-brain'
    }
    return out.sort((a, b) => a.pair.localeCompare(b.pair) || a.role.localeCompare(b.role))
  }

  /** Issue 13.7: a promoted side (a primary without its pair yet) and a demoted one (read-only, its pair ended). */
  private failoverRows(): ReplicationInfo[] {
    return this.failover.extraPairs().map((r) => {
      const p = r.journal?.positions
      return {
        pair: r.pair,
        role: r.role === 'promoted' ? 'primary' : 'secondary',
        job: null,
        volume: r.volume,
        group: r.group,
        peer: r.peer,
        state: r.role,
        link: 'down',
        epoch: r.epoch,
        lastWritten: r.lastSeq,
        lastDurable: p?.lastDurable ?? r.lastSeq,
        lastShipped: 0,
        lastApplied: 0,
        consistent: r.role === 'promoted',
        lag: { entries: 0, bytes: 0, seconds: 0 },
        journal: p
          ? { mode: p.mode, usedBytes: p.retainedBytes, limitBytes: 0, entries: p.retainedEntries, dirtyExtents: p.dirtyMarks }
          : { mode: 'none', usedBytes: 0, limitBytes: 0, entries: 0, dirtyExtents: 0 },
        rate: 0,
        sync: { copied: 0, total: 0 },
        lastError: null,
        ...(r.promotedAt !== null ? { promotedAt: r.promotedAt } : {}),
      }
    })
  }

  status(pair: string): ReplicationInfo[] {
    const found = this.list().filter((p) => p.pair === pair)
    if (found.length === 0) throw new VvfsError('PAIR_NOT_FOUND', `no replication pair named ${pair} here`)
    return found
  }

  /** After the mounts are gone and before the stores close: the journals and the secondaries' checkpoints. */
  async close(): Promise<void> {
    await this.listener?.close()
    await this.failover.close()
    for (const p of this.pairs.values()) await p.close().catch((err: unknown) => this.log.error({ event: 'replication.close_failed', err: String(err) }, 'a journal did not close cleanly'))
    this.pairs.clear()
    await this.secondaries.close()
  }
}
