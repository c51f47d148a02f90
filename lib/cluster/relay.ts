/**
 * This daemon as a relay in a cluster (issue 15): its lease, the volumes it
 * owns, and the gate every write acknowledgement passes. The Manager holds
 * one when started with --etcd; it serves (has a handle for) only volumes
 * this relay owns.
 *
 * Start: lease granted and relay registered (RelayLease.start), then — not
 * with --standby — every ready volume of the catalog nobody owns is claimed.
 * Before the relay serves any volume it raises the fence of every storage
 * server in its pool to the highest token it holds (`fence`, the Manager's:
 * fenceRemoteSystem on each remote system); local storage systems have no
 * fence (only one process can open a LevelDB store anyway).
 *
 * acknowledge(what, volumeId): throws FENCED unless the lease is inside its
 * ⅔·TTL window and the volume is owned here. Called after a write reached
 * the relay stack and after an fsync completed, before the host is answered:
 * a write of a relay that lost contact is never acknowledged, even if it
 * reached a storage server before the new owner's fence (that write is not
 * promised to anyone; the host sees EIO).
 *
 * Failure modes: etcd unreachable at start → the daemon does not start
 * (PEER_UNAVAILABLE). Lease lost while running → every volume of the relay
 * answers FENCED (EIO) from then on; the Manager stops serving them
 * (onVolumesLost) and the relay rejoins under a new lease, owning nothing.
 *
 * Takeover (watchReleased, takeOver): every relay watches the owner keys;
 * when one goes (the owner's lease expired, or it released the volume) the
 * Manager asks takeOver(), which claims the volume (of several relays one
 * wins) and fences the storage servers at the new token before the Manager
 * rebuilds the map from the servers' map log (lib/relay/map-log.ts) and
 * serves the volume.
 */
import type { Watcher } from 'etcd3'
import type { Etcd3 } from 'etcd3'
import { VvfsError } from '../errors.js'
import type { Logger } from '../log.js'
import { etcdClient, etcdError } from '../manager/etcd-catalog.js'
import { DEFAULT_LEASE_TTL_MS, type ClusterOptions } from './options.js'
import { Ownership, type Owner } from './ownership.js'
import { listRelays, RelayLease } from './relay-lease.js'

function handoverKey(prefix: string, volumeId: string): string {
  return `${prefix}handover/${volumeId}`
}

export interface RelayInfo {
  relay: string
  pid: number
  host: string
  startedAt: string
  lease: string
  leaseTtlMs: number
  volumes: { name: string; token: number }[]
  self: boolean
}

export class ClusterRelay {
  /** Volume id → ownership, for the volumes this relay owns. */
  private readonly owned = new Map<string, Owner>()
  private fencedTo = 0
  private ttlMs = DEFAULT_LEASE_TTL_MS
  private closed = false
  /** Called (by leaseLost) with the volumes this relay owned when etcd said its lease expired: the Manager stops serving them. */
  onVolumesLost: ((volumeIds: string[]) => void) | undefined
  private watcher: Watcher | null = null
  /** Volumes being handed over (`volume move`): owned in etcd, not acknowledging. */
  private readonly moving = new Map<string, Owner>()

  private constructor(
    private readonly client: Etcd3,
    private readonly prefix: string,
    /** Replaced when the relay rejoins after its lease was lost. */
    public lease: RelayLease,
    public ownership: Ownership,
    readonly standby: boolean,
    private readonly fence: (token: number) => Promise<void>,
    private readonly log: Logger,
  ) {}

  static async start(opts: ClusterOptions, log: Logger, fence: (token: number) => Promise<void>): Promise<ClusterRelay> {
    const client = etcdClient(opts.endpoints)
    const prefix = opts.prefix ?? 'vvfs/'
    try {
      const lease = await RelayLease.start({ client, prefix, relayId: opts.relayId, ttlMs: opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS, log })
      const relay = new ClusterRelay(client, prefix, lease, new Ownership(client, prefix, lease), opts.standby === true, fence, log)
      relay.ttlMs = opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS
      lease.onLost = () => relay.leaseLost()
      log.info({ event: 'relay.joined', relay: opts.relayId, lease: lease.leaseId, ttlMs: lease.ttlMs, standby: relay.standby }, 'joined the cluster')
      return relay
    } catch (err) {
      client.close()
      throw err
    }
  }

  get relayId(): string {
    return this.lease.relayId
  }

  /**
   * At start: claims each volume this relay served last (`relay` in its
   * record: it made it or took it over) and nobody owns — not with
   * --standby — then fences. Returns the ids this relay owns. Another
   * relay's volume is taken only when its owner key goes (takeOver), and
   * only with a map log.
   */
  async claimAtStart(volumes: readonly { id: string; name: string; relay?: string }[]): Promise<Set<string>> {
    if (!this.standby) {
      for (const v of volumes.filter((r) => r.relay === this.relayId)) {
        const owner = await this.ownership.claim(v.id, v.name)
        if (this.isMine(owner)) this.owned.set(v.id, owner)
        else this.log.info({ event: 'relay.volume_elsewhere', volume: v.name, owner: owner.relay, token: owner.token }, `volume ${v.name} is served by relay ${owner.relay}`)
      }
    }
    await this.fenceOwned()
    return new Set(this.owned.keys())
  }

  /** A volume this relay just created: it owns it, fenced, before it is served. */
  async takeNew(volumeId: string, name: string): Promise<void> {
    const owner = await this.ownership.take(volumeId, name)
    this.owned.set(volumeId, owner)
    await this.fenceOwned()
  }

  /**
   * Takes a volume whose owner went away: claims it and fences the servers
   * at the new token. Null when another relay claimed it first (or this
   * relay's lease is lost).
   */
  async takeOver(volumeId: string, name: string): Promise<Owner | null> {
    if (this.lease.isLost) return null
    const owner = await this.ownership.claim(volumeId, name)
    if (!this.isMine(owner)) {
      this.log.info({ event: 'relay.volume_elsewhere', volume: name, owner: owner.relay, token: owner.token }, `volume ${name} was taken by relay ${owner.relay}`)
      return null
    }
    this.owned.set(volumeId, owner)
    try {
      await this.fenceOwned()
    } catch (err) {
      // Not fenced: the old owner could still write. Give the volume back rather than serve it.
      this.owned.delete(volumeId)
      await this.ownership.release(volumeId).catch(() => {})
      throw err
    }
    return owner
  }

  /**
   * `vvfs volume move`: names `to` as the relay that takes the volume
   * (PREFIX/handover/ID under this relay's lease, so it goes if this relay
   * dies), then gives the volume up. Other relays leave it alone
   * (handoverTarget).
   */
  async handOver(volumeId: string, to: string): Promise<void> {
    await this.lease.lease
      .put(handoverKey(this.prefix, volumeId))
      .value(to)
      .exec()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot record the handover of volume ${volumeId}`)
      })
    await this.release(volumeId)
  }

  /** The relay a volume is being handed to, if a handover is under way. */
  async handoverTarget(volumeId: string): Promise<string | undefined> {
    const value = await this.client
      .get(handoverKey(this.prefix, volumeId))
      .string()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot read the handover of volume ${volumeId}`)
      })
    return value ?? undefined
  }

  async clearHandover(volumeId: string): Promise<void> {
    await this.client
      .delete()
      .key(handoverKey(this.prefix, volumeId))
      .exec()
      .catch((err: unknown) => {
        throw etcdError(err, `cannot clear the handover of volume ${volumeId}`)
      })
  }

  /** Whether a relay of this name is in the cluster (its lease alive). */
  async hasRelay(relayId: string): Promise<boolean> {
    return (await listRelays(this.client, this.prefix)).some((r) => r.relay === relayId && r.leaseTtlMs > 0)
  }

  /** Calls `released` with a volume id each time a volume loses its owner (the Manager decides whether to take it). */
  async watchReleased(released: (volumeId: string) => void): Promise<void> {
    this.watcher = await this.ownership.watchOwners(released)
  }

  /** The token the storage servers of this relay's pool were fenced at (0: none yet): a server added later is fenced at it. */
  get fenceToken(): number {
    return this.fencedTo
  }

  /** The token this relay holds a volume with (undefined: not owned here). */
  tokenOf(volumeId: string): number | undefined {
    return this.owned.get(volumeId)?.token
  }

  async release(volumeId: string): Promise<void> {
    this.owned.delete(volumeId)
    this.moving.delete(volumeId)
    await this.ownership.release(volumeId)
  }

  owns(volumeId: string): boolean {
    return this.owned.has(volumeId)
  }

  /** Owned, or owned and not acknowledging while a `volume move` drains it: its records still go to its map log. */
  holds(volumeId: string): boolean {
    return this.owned.has(volumeId) || this.moving.has(volumeId)
  }

  /** `volume move`: stops acknowledging the volume's I/O (FENCED) while it is drained; still owned in etcd. */
  stopServing(volumeId: string): void {
    const owner = this.owned.get(volumeId)
    if (!owner) return
    this.moving.set(volumeId, owner)
    this.owned.delete(volumeId)
  }

  /** The drain failed: acknowledges the volume's I/O again. */
  resumeServing(volumeId: string): void {
    const owner = this.moving.get(volumeId)
    if (!owner) return
    this.owned.set(volumeId, owner)
    this.moving.delete(volumeId)
  }

  /** Throws FENCED unless this relay may acknowledge `what` on the volume now. */
  acknowledge(what: string, volumeId: string, volume: string): void {
    this.lease.check(`${what} on volume ${volume}`)
    if (!this.owned.has(volumeId)) throw new VvfsError('FENCED', `relay ${this.relayId} no longer owns volume ${volume}`)
  }

  async relays(): Promise<RelayInfo[]> {
    const [relays, owners] = await Promise.all([listRelays(this.client, this.prefix), this.ownership.owners()])
    return relays
      .map((r) => ({
        ...r,
        volumes: owners
          .filter((o) => o.lease === r.lease)
          .map((o) => ({ name: o.volume, token: o.token }))
          .sort((a, b) => a.name.localeCompare(b.name)),
        self: r.relay === this.relayId,
      }))
      .sort((a, b) => a.relay.localeCompare(b.relay))
  }

  /**
   * etcd says the lease expired: every volume owned is lost (another relay
   * may have taken it and fenced the servers). The Manager stops serving
   * them; the relay rejoins the cluster under a new lease as a non-owner —
   * retrying until etcd answers — and may take volumes over again later.
   */
  private leaseLost(): void {
    const lost = [...this.owned.keys(), ...this.moving.keys()]
    this.owned.clear()
    this.moving.clear()
    this.onVolumesLost?.(lost)
    void this.rejoin()
  }

  private async rejoin(): Promise<void> {
    const old = this.lease
    await old.close(false).catch(() => {})
    for (let attempt = 1; !this.closed; attempt++) {
      try {
        const lease = await RelayLease.start({ client: this.client, prefix: this.prefix, relayId: this.relayId, ttlMs: this.ttlMs, log: this.log })
        if (this.closed) {
          await lease.close(true)
          return
        }
        this.lease = lease
        this.ownership = new Ownership(this.client, this.prefix, lease)
        lease.onLost = () => this.leaseLost()
        this.log.info({ event: 'relay.rejoined', relay: this.relayId, lease: lease.leaseId, attempt }, 'rejoined the cluster under a new lease, owning nothing')
        return
      } catch (err) {
        this.log.warn({ event: 'relay.rejoin_failed', relay: this.relayId, attempt, err: (err as Error).message }, 'could not rejoin the cluster yet')
        await new Promise((r) => setTimeout(r, Math.min(1000, this.ttlMs / 3)))
      }
    }
  }

  /** A clean stop revokes the lease: another relay may take the volumes at once. */
  async close(): Promise<void> {
    this.closed = true
    await this.watcher?.cancel().catch(() => {})
    this.watcher = null
    await this.lease.close(true)
    this.client.close()
    this.log.info({ event: 'relay.left', relay: this.relayId }, 'left the cluster')
  }

  private isMine(owner: Owner): boolean {
    return owner.relay === this.relayId && owner.lease === this.lease.leaseId
  }

  /** Raises the storage servers' fence to the highest token this relay holds (once per new token). */
  private async fenceOwned(): Promise<void> {
    let top = 0
    for (const o of this.owned.values()) top = Math.max(top, o.token)
    if (top <= this.fencedTo) return
    await this.fence(top)
    this.fencedTo = top
    this.log.info({ event: 'relay.fenced', relay: this.relayId, token: top }, `storage servers fenced at token ${top}`)
  }
}
