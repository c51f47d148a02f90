/**
 * The map log, the relay's side (issue 15, DESIGN.md "Relays in a
 * cluster"): every MapStore batch of a volume that has a map log is
 * appended, before it is written to the local MapStore and so before the
 * writes it records are acknowledged, to the storage server that keeps the
 * volume's log (VolumeRecord.mapLog) — stamped with the owner's fencing
 * token (the remote store's epoch) and this relay's batch sequence, keyed
 * by volume number + MapStore key (lib/storage/remote/map-log.ts). The
 * local MapStore is a cache: a relay that takes the volume over fences the
 * servers, then rebuilds its cache from the log (rebuild) and serves.
 *
 * Owns: the routing of keys to logs, the batch sequence, which logs an
 * append reached since their last sync. Never: decides ownership (the
 * ClusterRelay) or reads records (VolumeMap, the job drivers).
 *
 * Concurrency: the MapStore sends one batch at a time, so the appends of a
 * volume reach its log in the MapStore's order; a batch spanning several
 * logs is appended to them in parallel, and written locally only when all
 * answered. sync() runs after the MapStore's pending batches completed, so
 * every log an earlier append reached is marked (once its append was
 * answered) and synced — by a sync sent now or by one still in flight,
 * which it waits for too.
 *
 * Crash order: a record is on the log server before the local batch, so
 * the log is never behind what was acknowledged; a relay killed between
 * the two leaves the log ahead of its cache — the records of writes never
 * acknowledged, which may hold either version (as after any crash). Failure
 * modes: an append refused (FENCED: another relay owns the volume now;
 * TIMEOUT, PEER_UNAVAILABLE) fails the batch and so the writes; keys of
 * volumes with no map log (no remote storage server when they were made)
 * are kept locally only, and such a volume cannot be taken over.
 */
import { VvfsError } from '../errors.js'
import type { RemoteChunkStore } from '../storage/remote/client.js'
import type { MapLogRecord } from '../storage/remote/map-log.js'
import type { ExtentEntry } from './extent-entry.js'
import { decodeExtentRecord, isExtentKey, isRetainedKey, volumeKeyKinds, volumeOfKey } from './key-space.js'
import type { MapMirror, MapStore } from './map-store.js'

/** What the log needs of a remote store: RemoteChunkStore's map-log calls. */
export type MapLogServer = Pick<RemoteChunkStore, 'appendMapRecords' | 'readMapRecords' | 'writeLosses'>

export interface MapLogRouting {
  /** The server keeping a volume's map log; null: the volume has none (its records stay local). */
  logOf(volNo: number): MapLogServer | null
  /** The volume a job works on (its progress key names only the job). */
  jobVolume(jobNo: number): number | undefined
  /**
   * Records of the volume a sync was to make durable may have been lost (the
   * log server's machine restarted first): the volume's hosts are to hear it,
   * whoever's sync met it (the manager counts it as a failed write-back).
   */
  writesLost?(volNo: number, err: VvfsError): void
}

/** Appends answered since a sync of their log was sent: the log's writeLosses before the first of them (errseq), and whose records they were. */
interface Unsynced {
  losses: number
  volumes: Set<number>
}

/** Records per append when a log is rewritten (relog): extent records are ~50 bytes, so ~200 KiB per frame. */
const RELOG_BATCH = 4096

function logKey(volNo: number, key: Buffer): Buffer {
  const k = Buffer.allocUnsafe(4 + key.length)
  k.writeUInt32BE(volNo, 0)
  key.copy(k, 4)
  return k
}

function volumePrefix(volNo: number): Buffer {
  const k = Buffer.allocUnsafe(4)
  k.writeUInt32BE(volNo, 0)
  return k
}

export class VolumeMapLog implements MapMirror {
  private seq = 0
  /** Logs with an append answered since a sync of theirs was sent. */
  private readonly unsynced = new Map<MapLogServer, Unsynced>()
  /** Syncs sent and not answered yet: a later sync() waits for them too (they may cover appends it must). */
  private readonly syncing = new Set<Promise<void>>()
  /** Volumes whose log may have lost records (a sync met its server's machine restart), with how many such losses: rewritten from the cache by relog(). */
  private readonly stale = new Map<number, number>()

  constructor(private readonly routing: MapLogRouting) {}

  get relogPending(): boolean {
    return this.stale.size > 0
  }

  /**
   * Rewrites the log of each volume that may have lost records from the
   * relay's cache (`scan`: the MapStore's records): every cached record the
   * log lacks or holds another value of, and a deletion of every key the log
   * holds and the cache does not (a lost deletion). Without it, a record the
   * restart took stayed missing for good — later writes to an extent already
   * allocated append nothing — and a relay that took the volume over would
   * rebuild a map without it. Records appended after the loss and before
   * the rewrite do no harm: it compares the log as it is then with the
   * cache. The MapStore runs it before its next sync, with no batch in
   * flight; its appends are synced by that sync. A volume stays stale until
   * its rewrite succeeded, or until it is no longer this relay's (FENCED,
   * its log's system removed).
   */
  async relog(scan: (prefix: Buffer) => AsyncIterable<[Buffer, Buffer]>): Promise<void> {
    let failed: unknown = null
    for (const [volNo, losses] of [...this.stale]) {
      try {
        const log = this.routing.logOf(volNo)
        if (log) await this.rewrite(volNo, log, scan)
        // Not if another loss was found meanwhile: what the rewrite appended, or read, may be gone again.
        if (this.stale.get(volNo) === losses) this.stale.delete(volNo)
      } catch (err) {
        // Gone from this relay (another owns the volume now, or its log's storage system was removed): nothing of ours to rewrite.
        const code = err instanceof VvfsError ? err.code : null
        if (code === 'FENCED' || code === 'STORAGE_NOT_FOUND') this.stale.delete(volNo)
        else failed ??= err
      }
    }
    if (failed) throw failed
  }

  private async rewrite(volNo: number, log: MapLogServer, scan: (prefix: Buffer) => AsyncIterable<[Buffer, Buffer]>): Promise<void> {
    const logged = new Map<string, Buffer>()
    for (const r of await log.readMapRecords(volumePrefix(volNo))) logged.set(r.key.subarray(4).toString('latin1'), r.value)
    const out: { key: Buffer; value: Buffer | null }[] = []
    for await (const [key, value] of this.cachedRecords(volNo, scan)) {
      const k = key.toString('latin1')
      const had = logged.get(k)
      logged.delete(k)
      if (!had?.equals(value)) out.push({ key, value })
    }
    for (const k of logged.keys()) out.push({ key: Buffer.from(k, 'latin1'), value: null })
    for (let i = 0; i < out.length; i += RELOG_BATCH) await this.append(out.slice(i, i + RELOG_BATCH))
  }

  /** Every record of volume `volNo` in the relay's cache (`scan`: the MapStore's records under a prefix), kind by kind. */
  private async *cachedRecords(volNo: number, scan: (prefix: Buffer) => AsyncIterable<[Buffer, Buffer]>): AsyncGenerator<[Buffer, Buffer]> {
    for (const kind of volumeKeyKinds()) {
      for await (const record of scan(kind)) if (volumeOfKey(record[0], (jobNo) => this.routing.jobVolume(jobNo)) === volNo) yield record
    }
  }

  async append(records: { key: Buffer; value: Buffer | null }[]): Promise<void> {
    const byLog = new Map<MapLogServer, { recs: MapLogRecord[]; volumes: Set<number> }>()
    for (const r of records) {
      const volNo = volumeOfKey(r.key, (jobNo) => this.routing.jobVolume(jobNo))
      if (volNo === undefined) continue
      const log = this.routing.logOf(volNo)
      if (!log) continue
      let to = byLog.get(log)
      if (!to) byLog.set(log, (to = { recs: [], volumes: new Set() }))
      to.recs.push({ key: logKey(volNo, r.key), value: r.value })
      to.volumes.add(volNo)
    }
    if (byLog.size === 0) return
    const seq = ++this.seq
    await Promise.all(
      [...byLog].map(async ([log, to]) => {
        const losses = log.writeLosses
        await log.appendMapRecords(seq, to.recs, false)
        // Once answered (applied on the server): a sync sent from now on covers it; one already sent may not.
        this.noteUnsynced(log, { losses, volumes: to.volumes })
      }),
    )
  }

  /**
   * Makes durable every append answered before the call: a sync of each log
   * appended to since its last sync was sent, and every sync still
   * unanswered — another caller's may be the one that took our log out of
   * `unsynced` (2026-12-04 review: a second fsync returned while the first's
   * sync was in flight, before its map records were durable).
   */
  async sync(): Promise<void> {
    const earlier = [...this.syncing]
    const logs = [...this.unsynced]
    this.unsynced.clear()
    const results = await Promise.allSettled([...earlier, ...logs.map(([log, u]) => this.syncLog(log, u))])
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed) {
      const err = failed.reason as unknown
      throw err instanceof VvfsError ? err : new VvfsError('IO_ERROR', `map log sync failed: ${(err as Error).message}`, { cause: err })
    }
    // A loss another caller's sync found after our MapStore's rewrite ran: not durable until rewritten (the next sync's relog).
    if (this.stale.size > 0) {
      throw new VvfsError('IO_ERROR', `map records of volume(s) ${[...this.stale.keys()].join(', ')} may have been lost and are not yet written again`, { details: { reason: 'writes-lost' } })
    }
  }

  /** Adds appends answered (or a failed sync's) to what the next sync of `log` covers. */
  private noteUnsynced(log: MapLogServer, u: Unsynced): void {
    const had = this.unsynced.get(log)
    if (!had) this.unsynced.set(log, { losses: u.losses, volumes: new Set(u.volumes) })
    else {
      had.losses = Math.min(had.losses, u.losses)
      for (const v of u.volumes) had.volumes.add(v)
    }
  }

  /**
   * One log's sync. The log server's machine restarted before it (errseq):
   * appends answered before may be gone, so it fails — for every caller
   * waiting on it, not only the one that sent it (a second fsync must not
   * return while the first learns of the loss) — every volume whose records
   * they were is told, and is rewritten by the next relog.
   */
  private syncLog(log: MapLogServer, u: Unsynced): Promise<void> {
    const sent: Promise<void> = log.appendMapRecords(++this.seq, [], true).then(
      () => {
        this.syncing.delete(sent)
        if (log.writeLosses <= u.losses) return
        const err = new VvfsError('IO_ERROR', `map records may have been lost: a map log server's machine restarted before a sync covered them`, { details: { reason: 'writes-lost' } })
        for (const volNo of u.volumes) {
          this.stale.set(volNo, (this.stale.get(volNo) ?? 0) + 1)
          this.routing.writesLost?.(volNo, err)
        }
        throw err
      },
      (err: unknown) => {
        this.syncing.delete(sent)
        this.noteUnsynced(log, u) // what it was to cover is synced by the next sync()
        throw err
      },
    )
    this.syncing.add(sent)
    return sent
  }

  /**
   * Replaces every cached record of the volume in `maps` with the log's
   * (the relay has fenced the servers: nobody appends to it any more but
   * this relay). Returns how many records the log held.
   */
  async rebuild(maps: MapStore, volNo: number, log: MapLogServer): Promise<number> {
    const logged = await log.readMapRecords(volumePrefix(volNo))
    const drop: Buffer[] = []
    for await (const [key] of this.cachedRecords(volNo, (prefix) => maps.scan(prefix))) drop.push(key)
    await maps.replaceCached(
      drop,
      logged.map((r) => ({ key: r.key.subarray(4), value: r.value })),
    )
    return logged.length
  }

  /**
   * The extent entries (the map's and migrations' retained sources') a
   * volume's log holds now, without touching the MapStore: the space of a
   * volume served by another relay (lib/cluster/foreign-space.ts).
   */
  async entriesOf(volNo: number, log: MapLogServer): Promise<ExtentEntry[]> {
    const out: ExtentEntry[] = []
    for (const r of await log.readMapRecords(volumePrefix(volNo))) {
      const key = r.key.subarray(4)
      if (!isExtentKey(key) && !isRetainedKey(key)) continue
      const { entry } = decodeExtentRecord(r.value)
      if (entry) out.push(entry)
    }
    return out
  }
}
