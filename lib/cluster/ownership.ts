/**
 * Volume ownership by lease (issue 15): each volume is served by one relay
 * at a time, the one whose key PREFIX/owners/VOLUME-ID exists under its
 * lease (lib/cluster/relay-lease.ts).
 *
 * claim(): one etcd transaction, IF the key does not exist (create
 * revision 0) THEN put it under this relay's lease ELSE read it. Of two
 * relays claiming at once only one put can follow "does not exist". The
 * fencing token is the etcd revision of the transaction that made the relay
 * owner — the key's create revision: etcd revisions only grow, so every
 * later owner has a higher token than every earlier one, and a relay that
 * claims again a volume it still owns gets the same token.
 *
 * Before its first write a new owner raises the fence of every storage
 * server the volume's data may be on to its token (`fence`, given by the
 * caller: the Manager raises every remote storage system in its pool);
 * from then the servers refuse the old owner's writes with FENCED, however
 * late they arrive. A storage server keeps one fence (not one per volume):
 * relays writing to one server take turns, so in this build a cluster has
 * one active relay per set of storage servers and the others stand by
 * (DESIGN.md, "Relays in a cluster").
 *
 * An owner key goes away when its lease expires (etcd deletes every key of
 * a lease in one step) or on release(); watchOwners() tells a standby.
 *
 * Concurrency: a claim and a release are single transactions; nothing is
 * cached here — etcd is asked each time (claims are management events).
 * Failure modes: etcd unreachable → PEER_UNAVAILABLE, nothing claimed that
 * the caller is told of (a claim whose reply was lost may have succeeded:
 * claiming again finds the key under this relay's lease and returns it).
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3'
import { VvfsError } from '../errors.js'
import { etcdError } from '../manager/etcd-catalog.js'
import type { RelayLease } from './relay-lease.js'

export interface OwnerRecord {
  relay: string
  volume: string
  claimedAt: string
}

export interface Owner extends OwnerRecord {
  volumeId: string
  /** The fencing token: the revision of the transaction that made `relay` owner. */
  token: number
  lease: string
}

export function ownerKey(prefix: string, volumeId: string): string {
  return `${prefix}owners/${volumeId}`
}

function ownerOf(kv: IKeyValue, prefix: string): Owner {
  const rec = JSON.parse(kv.value.toString('utf8')) as OwnerRecord
  return { ...rec, volumeId: kv.key.toString('utf8').slice(`${prefix}owners/`.length), token: Number(kv.create_revision), lease: kv.lease }
}

export class Ownership {
  constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    readonly relay: RelayLease,
  ) {}

  /**
   * Makes this relay the volume's owner if nobody is; returns the owner
   * either way (this relay with its token, or the other one).
   */
  async claim(volumeId: string, volume: string): Promise<Owner> {
    const key = ownerKey(this.prefix, volumeId)
    const rec: OwnerRecord = { relay: this.relay.relayId, volume, claimedAt: new Date().toISOString() }
    const res = await this.client
      .if(key, 'Create', '==', 0)
      .then(this.relay.lease.put(key).value(JSON.stringify(rec)))
      .else(this.client.get(key))
      .commit()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot claim volume ${volume}`)
      })
    if (res.succeeded) return { ...rec, volumeId, token: Number(res.header.revision), lease: this.relay.leaseId }
    return ownerOf(res.responses[0]!.response_range!.kvs[0]!, this.prefix)
  }

  /** claim() that throws NOT_OWNER when another relay owns the volume. */
  async take(volumeId: string, volume: string): Promise<Owner> {
    const owner = await this.claim(volumeId, volume)
    if (owner.relay !== this.relay.relayId || owner.lease !== this.relay.leaseId) {
      throw new VvfsError('NOT_OWNER', `volume ${volume} is owned by relay ${owner.relay} (token ${owner.token})`, { details: { owner: owner.relay, token: owner.token } })
    }
    return owner
  }

  /** Gives the volume up (only if this relay's lease still holds it). */
  async release(volumeId: string): Promise<boolean> {
    const key = ownerKey(this.prefix, volumeId)
    const res = await this.client
      .if(key, 'Lease', '==', this.relay.leaseId)
      .then(this.client.delete().key(key))
      .commit()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot release volume ${volumeId}`)
      })
    return res.succeeded
  }

  /** Every volume's owner. */
  async owners(): Promise<Owner[]> {
    const res = await this.client
      .getAll()
      .prefix(`${this.prefix}owners/`)
      .exec()
      .catch((err: unknown) => {
        throw etcdError(err, 'cannot list volume owners')
      })
    return res.kvs.map((kv) => ownerOf(kv, this.prefix))
  }

  /** Calls `released` with a volume id each time a volume loses its owner (lease expired, or released). */
  async watchOwners(released: (volumeId: string) => void): Promise<Watcher> {
    const watcher = await this.client
      .watch()
      .prefix(`${this.prefix}owners/`)
      .create()
      .catch((err: unknown) => {
        throw etcdError(err, 'cannot watch volume owners')
      })
    watcher.on('delete', (kv) => released(kv.key.toString('utf8').slice(`${this.prefix}owners/`.length)))
    watcher.on('error', (err) => process.emitWarning(`the owners watch failed (it reconnects): ${err.message}`))
    return watcher
  }
}
