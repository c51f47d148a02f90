/**
 * A relay's lease in etcd (issue 15): its presence in the cluster and the
 * clock its write acknowledgements run on.
 *
 * At start the relay is granted a lease (TTL rounded up to whole seconds,
 * as etcd grants them) and registers PREFIX/relays/ID → {relay, pid,
 * startedAt, ttlMs} under it; a relay id whose key is still held by a live
 * lease is refused (RELAY_EXISTS): two processes must not be one relay.
 * Everything the relay owns (lib/cluster/ownership.ts) is attached to the
 * same lease, so when the lease expires etcd deletes it all in one step.
 *
 * Keep-alive: our own timer sends one keep-alive every KEEPALIVE_FRACTION
 * of the TTL (never the client library's automatic keep-alive, which
 * reports a lost lease only after 2×TTL). A keep-alive that etcd answers
 * with TTL > 0 renews the lease from the moment etcd handled it, which is
 * after the moment we sent it: so `validUntil` = send time + ⅔·TTL is
 * always before etcd could let the lease expire, by ⅓·TTL of margin for
 * clock rate differences and the reply's delay.
 *
 * acknowledging(): true until `validUntil`. The owner asks it before it
 * acknowledges a write or an fsync; past it the answer is FENCED (the host
 * sees EIO) — even if the lease is in fact alive, because we cannot know.
 * When etcd answers a keep-alive with TTL ≤ 0 the lease is gone for good
 * (`lost`): the relay's ownerships went with it and `onLost` is called once.
 *
 * Concurrency: one keep-alive in flight at a time; a keep-alive that takes
 * longer than the interval delays the next (no pile-up on a slow etcd).
 * Failure modes: etcd unreachable → keep-alives fail, acknowledging() turns
 * false ⅔·TTL after the last good one, and back to true at the first
 * keep-alive that etcd answers within the TTL (the lease lived on). etcd
 * restarted: leases survive a restart (etcd persists them and extends
 * their TTL on election), so keep-alives resume on the same lease.
 */
import { hostname } from 'node:os'
import { EtcdLeaseInvalidError, type Etcd3, type Lease } from 'etcd3'
import { VvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import { etcdError } from '../manager/etcd-catalog.js'

/**
 * A keep-alive every TTL/6: three can be lost in a row (a GC pause, a
 * slow etcd fsync, a dropped packet) before the ⅔·TTL window closes.
 */
export const KEEPALIVE_FRACTION = 1 / 6
/** Of the TTL since the last good keep-alive was sent, the part during which the relay acknowledges writes. */
export const ACK_FRACTION = 2 / 3

export interface RelayRecord {
  relay: string
  pid: number
  host: string
  startedAt: string
  ttlMs: number
}

export function relayKey(prefix: string, relayId: string): string {
  return `${prefix}relays/${relayId}`
}

export class RelayLease {
  private validUntil: number
  private timer: NodeJS.Timeout | undefined
  private lost = false
  private closed = false
  private inFlight: Promise<void> | undefined
  /** Called once when etcd says the lease is gone. */
  onLost: (() => void) | undefined
  /** Called when acknowledging() turns true again after it was false (etcd answered in time). */
  onRenewed: (() => void) | undefined
  private wasValid = true

  private constructor(
    private readonly client: Etcd3,
    readonly lease: Lease,
    readonly leaseId: string,
    readonly relayId: string,
    readonly ttlMs: number,
    private readonly log: Logger,
    grantedAt: number,
  ) {
    this.validUntil = grantedAt + ACK_FRACTION * ttlMs
  }

  static async start(opts: { client: Etcd3; prefix: string; relayId: string; ttlMs: number; log: Logger }): Promise<RelayLease> {
    const ttlSeconds = Math.max(1, Math.ceil(opts.ttlMs / 1000))
    const ttlMs = ttlSeconds * 1000
    const lease = opts.client.lease(ttlSeconds, { autoKeepAlive: false })
    const sentAt = Date.now()
    let leaseId: string
    try {
      leaseId = await lease.grant()
    } catch (err) {
      throw etcdError(err, `cannot grant relay ${opts.relayId} a lease`)
    }
    const key = relayKey(opts.prefix, opts.relayId)
    const record: RelayRecord = { relay: opts.relayId, pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), ttlMs }
    const put = await opts.client
      .if(key, 'Create', '==', 0)
      .then(lease.put(key).value(JSON.stringify(record)))
      .commit()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot register relay ${opts.relayId}`)
      })
    if (!put.succeeded) {
      await lease.revoke().catch(() => {})
      throw new VvfsError('RELAY_EXISTS', `relay ${opts.relayId} is already in the cluster (its lease is alive): give this daemon another --relay-id, or wait up to ${ttlSeconds}s for the old one's lease to expire`)
    }
    const relay = new RelayLease(opts.client, lease, leaseId, opts.relayId, ttlMs, opts.log, sentAt)
    relay.schedule()
    return relay
  }

  /** True while writes may be acknowledged: less than ⅔·TTL since the last keep-alive etcd accepted was sent. */
  acknowledging(): boolean {
    return !this.lost && !this.closed && Date.now() < this.validUntil
  }

  /** Throws FENCED unless acknowledging(). */
  check(what: string): void {
    if (this.acknowledging()) return
    const why = this.lost ? 'its etcd lease expired' : `no keep-alive reached etcd for ${Math.round((Date.now() - this.validUntil) / 1000 + (ACK_FRACTION * this.ttlMs) / 1000)}s`
    throw new VvfsError('FENCED', `relay ${this.relayId} may not acknowledge ${what}: ${why}`)
  }

  get isLost(): boolean {
    return this.lost
  }

  /** Milliseconds left in the acknowledgement window (0 when closed). */
  remainingMs(): number {
    return this.acknowledging() ? this.validUntil - Date.now() : 0
  }

  /**
   * Stops keep-alives. `revoke` (a clean stop) ends the lease at once, so
   * the relay's volumes can be taken without waiting out the TTL.
   */
  async close(revoke: boolean): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearTimeout(this.timer)
    await this.inFlight
    if (revoke && !this.lost) await this.lease.revoke().catch(() => {})
    else this.lease.release()
  }

  private schedule(): void {
    if (this.closed || this.lost) return
    this.timer = setTimeout(() => {
      this.inFlight = this.keepAlive().finally(() => {
        this.inFlight = undefined
        this.schedule()
      })
    }, this.ttlMs * KEEPALIVE_FRACTION)
  }

  private async keepAlive(): Promise<void> {
    const sentAt = Date.now()
    try {
      // Bounded by the client's call deadline; a late answer renews from its send time only.
      const res = await this.lease.keepaliveOnce({ deadline: sentAt + this.ttlMs * ACK_FRACTION })
      if (Number(res.TTL) <= 0) return this.markLost()
      this.validUntil = Math.max(this.validUntil, sentAt + ACK_FRACTION * this.ttlMs)
      if (!this.wasValid && this.acknowledging()) {
        this.wasValid = true
        this.log.info({ event: 'relay.lease_renewed', relay: this.relayId, lease: this.leaseId }, 'etcd answered a keep-alive again: acknowledging writes')
        this.onRenewed?.()
      }
    } catch (err) {
      if (this.closed) return
      // etcd answers a keep-alive of an expired lease with "lease not found"; the etcd3 client once it
      // knows, with EtcdLeaseInvalidError (the message was missed: a relay cut off past its TTL never learned it).
      if (err instanceof EtcdLeaseInvalidError || /not found/i.test((err as Error).message)) return this.markLost()
      if (this.wasValid && !this.acknowledging()) this.wasValid = false
      this.log.warn({ event: 'relay.keepalive_failed', relay: this.relayId, lease: this.leaseId, err: (err as Error).message, acknowledging: this.acknowledging() }, 'lease keep-alive failed')
    }
    if (this.wasValid && !this.acknowledging()) this.wasValid = false
  }

  private markLost(): void {
    if (this.lost) return
    this.lost = true
    this.log.error({ event: 'relay.lease_lost', relay: this.relayId, lease: this.leaseId }, 'etcd says this relay\'s lease expired: its volumes are no longer its own')
    this.onLost?.()
  }
}

/** The relays registered in the cluster, with the leases' remaining TTL (-1: expired just now). */
export async function listRelays(client: Etcd3, prefix: string): Promise<(RelayRecord & { lease: string; leaseTtlMs: number })[]> {
  const res = await client
    .getAll()
    .prefix(`${prefix}relays/`)
    .exec()
    .catch((err: unknown) => {
      throw etcdError(err, 'cannot list relays')
    })
  const out: (RelayRecord & { lease: string; leaseTtlMs: number })[] = []
  for (const kv of res.kvs) {
    const rec = JSON.parse(kv.value.toString('utf8')) as RelayRecord
    const ttl = await client.leaseClient.leaseTimeToLive({ ID: kv.lease }).catch(() => ({ TTL: '-1' }))
    out.push({ ...rec, lease: kv.lease, leaseTtlMs: Number(ttl.TTL) * 1000 })
  }
  return out
}
