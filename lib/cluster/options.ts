/**
 * How a daemon joins a vvfs cluster (issue 15): `vvfs daemon --etcd URL
 * --relay-id NAME [--standby]`. Without it the daemon is alone: the file
 * catalog, no leases.
 */

export interface ClusterOptions {
  /** etcd client URLs. */
  endpoints: string[]
  /** This relay's name in the cluster: unique, [a-z0-9._-]. */
  relayId: string
  /** Key prefix of the cluster in etcd (default `vvfs/`). */
  prefix?: string
  /** Take no volumes at start; take those whose owner's lease expires. */
  standby?: boolean
  /** Lease TTL in ms (default DEFAULT_LEASE_TTL_MS). */
  leaseTtlMs?: number
}

/**
 * 5 s, as the benchmark: a dead owner's volumes wait up to one TTL
 * before another relay takes them, and a live owner stops acknowledging
 * writes ⅔·TTL (3.3 s) after its last successful keep-alive, so a keep-alive
 * every TTL/6 (833 ms) tolerates three lost in a row.
 */
export const DEFAULT_LEASE_TTL_MS = 5000
