/**
 * The etcd-backed catalog store (issue 15): several relays, one catalog.
 * Implements CatalogStore (lib/manager/catalog.ts) with the same promises as
 * the file store; the whole catalog is one etcd key, PREFIX/catalog, whose
 * value is the catalog's JSON plus the id of the commit that wrote it.
 *
 * Revisions: the snapshot's `rev` is the key's etcd `version` — 1 when the
 * key was created (the empty catalog, as a new state directory), +1 per put —
 * so it counts commits exactly as the file store's revision does. The key is
 * never deleted (a delete would restart the version).
 *
 * update(fn): runs fn on a draft of this store's snapshot, then commits in
 * one etcd transaction: IF version(key) == rev THEN put ELSE get. A lost
 * compare brings the newer value in (this store's snapshot moves to it and
 * the watchers are told) and fn runs again on it, at most UPDATE_ATTEMPTS
 * times (after a random backoff that doubles), then CATALOG_CONFLICT — two relays' conflicting updates never both
 * win, because only one put can follow a given version. The client may send
 * a transaction again after its reply was lost; the second try then finds
 * the version moved, and the commit id in the value tells whether the move
 * was this commit (won) or another relay's (run fn again) — so a create is
 * never reported as "already exists" by the relay that made it.
 *
 * Concurrency: this store's updates run one at a time in call order (as
 * the file store's). watch() is etcd's watch on the key: every relay's
 * commit reaches every store, in revision order; a store's snapshot only
 * moves forward (a watch event older than what an update already brought is
 * dropped), so read() is at most one watch delay behind other relays.
 *
 * Failure modes: etcd unreachable → an update fails with PEER_UNAVAILABLE
 * after the call deadline (CALL_DEADLINE_MS) and changes nothing it knows
 * of; a transaction whose reply was lost may still have committed — the next
 * update or the watch brings it in (the same as the file store's failed
 * directory fsync). Durability is etcd's: a put is acknowledged once a
 * quorum has it in its write-ahead log (fsync'd). The watch reconnects by
 * itself (the client's backoff) and resumes after the last revision seen.
 *
 * Limits: no fairness — a relay committing in a tight loop answers its next
 * transaction before a loser's retry arrives, so the loser can fail with
 * CATALOG_CONFLICT (seen with two kill -9 test writers on a loaded machine);
 * catalog commits are management events, a few per second at most. The
 * value is the whole catalog; etcd's default request limit is
 * 1.5 MiB, about 5,000 volumes with jobs (a catalog record is < 300 bytes).
 * Volume maps never go here (a map is ~1 M records per TiB).
 *
 * Owns: the key PREFIX/catalog. Never: leases and ownership (lib/cluster).
 */
import { randomUUID } from 'node:crypto'
import { Etcd3, type IKeyValue, type IOptions, type Watcher } from 'etcd3'
import { asVvfsError, VvfsError } from '../errors.js'
import {
  deepFreeze,
  draftOf,
  emptyCatalog,
  parseCatalog,
  SerialCatalog,
  UPDATE_ATTEMPTS,
  type CatalogData,
  type CatalogSnapshot,
} from './catalog.js'

/**
 * A unary etcd call (get, put, transaction, lease grant or keep-alive) that
 * has no answer in 5 s has lost its server: etcd answers in ~1-10 ms here
 * (a put fsyncs its WAL), ~100 ms through a leader election.
 */
export const CALL_DEADLINE_MS = 5000

/**
 * Backoff after a lost compare: random in [0, 2 ms · 2^attempt), at most
 * ~0.5 s over UPDATE_ATTEMPTS. Without it, of two relays committing in a
 * loop (the kill -9 test's writers), one lost 8 times in a row within a few
 * hundred commits; a commit takes ~1-3 ms on etcd here.
 */
const CONFLICT_BACKOFF_MS = 2

export interface EtcdOptions {
  /** etcd client URLs, e.g. http://127.0.0.1:2379. */
  endpoints: string[]
  /** Key prefix of this vvfs cluster (default `vvfs/`): several clusters can share one etcd. */
  prefix?: string
}

/** An etcd client whose unary calls have a deadline (streams — watch, keep-alive — have none). */
export function etcdClient(endpoints: string[]): Etcd3 {
  const options: IOptions = {
    hosts: endpoints,
    dialTimeout: CALL_DEADLINE_MS,
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_DEADLINE_MS }),
  }
  return new Etcd3(options)
}

/** An error from etcd as a VvfsError: unreachable or timed out is PEER_UNAVAILABLE. */
export function etcdError(err: unknown, what: string): VvfsError {
  if (err instanceof VvfsError) return err
  return new VvfsError('PEER_UNAVAILABLE', `etcd ${what}: ${(err as Error).message}`, { cause: err })
}

interface StoredValue {
  snapshot: CatalogSnapshot
  commit: string | undefined
}

export class EtcdCatalog extends SerialCatalog {
  private watcher: Watcher | undefined
  private closed = false

  private constructor(
    private readonly client: Etcd3,
    readonly key: string,
    snapshot: CatalogSnapshot,
    isNew: boolean,
  ) {
    super(snapshot, isNew)
  }

  /** Opens the cluster's catalog, creating the empty one (revision 1) if there is none. */
  static async open(opts: EtcdOptions): Promise<EtcdCatalog> {
    const client = etcdClient(opts.endpoints)
    const key = `${opts.prefix ?? 'vvfs/'}catalog`
    try {
      const commit = randomUUID()
      const created = await client
        .if(key, 'Version', '==', 0)
        .then(client.put(key).value(JSON.stringify({ commit, ...emptyCatalog() })))
        .else(client.get(key))
        .commit()
        .catch((err: unknown) => {
          throw etcdError(err, `${opts.endpoints.join(',')}: cannot open the catalog`)
        })
      let stored: StoredValue
      if (created.succeeded) stored = { snapshot: { rev: 1, data: deepFreeze(emptyCatalog()) }, commit }
      else stored = decode(created.responses[0]!.response_range!.kvs[0]!, key)
      const catalog = new EtcdCatalog(client, key, stored.snapshot, created.succeeded && stored.commit === commit)
      await catalog.follow(Number(created.header.revision))
      return catalog
    } catch (err) {
      client.close()
      throw err
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.settled()
    await this.watcher?.cancel().catch(() => {})
    this.client.close()
  }

  /** Watches the key from the etcd revision after `afterRevision` (that of the read that gave the snapshot). */
  private async follow(afterRevision: number): Promise<void> {
    const watcher = await this.client
      .watch()
      .key(this.key)
      .startRevision(String(afterRevision + 1))
      .create()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot watch ${this.key}`)
      })
    watcher.on('put', (kv) => {
      try {
        this.advance(decode(kv, this.key).snapshot)
      } catch (err) {
        process.emitWarning(`the catalog watch got a value it cannot read: ${asVvfsError(err).message}`)
      }
    })
    // The client reconnects the watch itself; an error here is only reported.
    watcher.on('error', (err) => process.emitWarning(`the catalog watch failed (it reconnects): ${err.message}`))
    this.watcher = watcher
  }

  /** Moves the snapshot forward (never back) and tells the watchers. */
  private advance(s: CatalogSnapshot): void {
    if (s.rev <= this.snapshot.rev) return
    this.snapshot = s
    this.notify()
  }

  protected async commit<T>(fn: (draft: CatalogData) => T): Promise<{ rev: number; result: T }> {
    if (this.closed) throw new VvfsError('SHUTTING_DOWN', 'the catalog is closed')
    for (let attempt = 0; attempt < UPDATE_ATTEMPTS; attempt++) {
      const base = this.snapshot
      const draft = draftOf<CatalogData>(base.data)
      const result = fn(draft)
      const commit = randomUUID()
      const txn = await this.client
        .if(this.key, 'Version', '==', base.rev)
        .then(this.client.put(this.key).value(JSON.stringify({ commit, ...draft })))
        .else(this.client.get(this.key))
        .commit()
        .catch((err: unknown) => {
          throw etcdError(err, `cannot commit the catalog at revision ${base.rev + 1}`)
        })
      const rev = base.rev + 1
      if (txn.succeeded) {
        this.advance({ rev, data: deepFreeze(draft) })
        return { rev, result }
      }
      const fresh = decode(txn.responses[0]!.response_range!.kvs[0]!, this.key)
      // This very commit, sent again by the client after its reply was lost.
      if (fresh.commit === commit) {
        this.advance(fresh.snapshot)
        return { rev: fresh.snapshot.rev, result }
      }
      this.advance(fresh.snapshot)
      // A relay committing in a loop would win every round against one that
      // just lost (its next fn runs while the loser's reply is on the way):
      // the loser waits a random while, doubling, before it tries again.
      await new Promise((r) => setTimeout(r, Math.random() * CONFLICT_BACKOFF_MS * 2 ** attempt))
    }
    throw new VvfsError('CATALOG_CONFLICT', `${this.key}: another relay committed first ${UPDATE_ATTEMPTS} times in a row; try again`)
  }
}

function decode(kv: IKeyValue, key: string): StoredValue {
  const parsed = parseCatalog(kv.value.toString('utf8'), `etcd key ${key}`)
  const { commit, ...data } = parsed.data as CatalogData & { commit?: string }
  return { snapshot: { rev: Number(kv.version), data: deepFreeze(data) }, commit }
}
