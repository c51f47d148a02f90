/**
 * Remote storage systems in the daemon: a StorageSystem over a
 * RemoteChunkStore, opened from its catalog record (at start: connected in
 * the background, never waited for — a server that is down makes its I/O
 * fail, not the daemon's start) or added by `storage add --remote`
 * (connected, claimed and checked before the record is written).
 *
 * Owns: which StorageSystem is over which RemoteChunkStore (a WeakMap, so
 * a closed system leaves nothing behind), for `storage list` (location,
 * connection state, round trip) and `storage fence`.
 *
 * Failure modes: a key file that cannot be read or is readable by others is
 * INVALID_ARGUMENT (at add and at start: the daemon does not start on a
 * broken record, as for a local store it cannot open); a server that is not
 * reachable at add is IO_ERROR and nothing is recorded.
 */
import { VvfsError } from '../../errors.js'
import type { Logger } from '../../log.js'
import { loadPeerKey } from '../../wire/auth.js'
import { parseHostPort } from '../../wire/server.js'
import { StorageSystem } from '../storage-system.js'
import { RemoteChunkStore, type RemoteLinkStatus } from './client.js'

/** What the catalog keeps of a remote storage system (StorageRecord.remote). */
export interface RemoteRecord {
  /** ADDR:PORT of the storage server. */
  address: string
  /** The pre-shared key's file, absolute. */
  peerKey: string
  /** The fencing token this daemon puts on its mutations (raised by `storage fence`). */
  epoch: number
}

const stores = new WeakMap<StorageSystem, RemoteChunkStore>()

/** Test hook and setting: the deadline of every remote call (default DEFAULT_REMOTE_DEADLINE_MS; VVFS_REMOTE_DEADLINE_MS overrides). */
function deadlineMs(): number | undefined {
  const v = Number(process.env.VVFS_REMOTE_DEADLINE_MS)
  return Number.isFinite(v) && v > 0 ? v : undefined
}

/** Setting: batch requests on the wire per remote store (default APPLY_WINDOW; VVFS_REMOTE_APPLY_WINDOW overrides, 0: no limit and so no merging — bench/remote.ts compares). */
function applyWindow(): number | undefined {
  const raw = process.env.VVFS_REMOTE_APPLY_WINDOW
  const v = Number(raw)
  if (raw === undefined || raw === '' || !Number.isInteger(v) || v < 0) return undefined
  return v === 0 ? Infinity : v
}

async function storeOptions(rec: { sid: number; name: string; remote: RemoteRecord }, log: Logger, claim: boolean) {
  const { host, port } = parseHostPort(rec.remote.address)
  const key = await loadPeerKey(rec.remote.peerKey)
  return { host, port, key, log, sid: rec.sid, name: rec.name, epoch: rec.remote.epoch, claim, deadlineMs: deadlineMs(), applyWindow: applyWindow() }
}

/** At start: the system of a catalog record, its link coming up in the background. */
export async function openRemoteSystem(rec: { sid: number; name: string; capacity: number; remote: RemoteRecord }, log: Logger): Promise<StorageSystem> {
  const store = new RemoteChunkStore(await storeOptions(rec, log, false))
  const system = StorageSystem.over(store, { capacity: rec.capacity })
  stores.set(system, store)
  return system
}

/**
 * For `storage add --remote`: connects, claims the server as this storage
 * system (a new server becomes it; one that is another refuses), and
 * returns the system with the server's --capacity (0: none given).
 */
export async function addRemoteSystem(
  p: { sid: number; name: string; capacity?: number; remote: RemoteRecord },
  log: Logger,
): Promise<{ system: StorageSystem; capacity: number; epoch: number }> {
  const { store, server } = await RemoteChunkStore.connect(await storeOptions(p, log, true))
  const capacity = p.capacity ?? server.capacity
  if (capacity === 0) {
    await store.close()
    throw new VvfsError('INVALID_SIZE', `the server at ${p.remote.address} announces no capacity: give --capacity`)
  }
  if (server.capacity > 0 && capacity > server.capacity) {
    await store.close()
    throw new VvfsError('INVALID_SIZE', `capacity ${capacity} is more than the server at ${p.remote.address} holds (${server.capacity})`)
  }
  // The server's fence may already be above this daemon's epoch (a server fenced before): start from it.
  store.epoch = Math.max(store.epoch, server.fence)
  const system = StorageSystem.over(store, { capacity })
  stores.set(system, store)
  return { system, capacity, epoch: store.epoch }
}

/** The link of a remote system (null for a local one). */
export function remoteLink(system: StorageSystem): RemoteLinkStatus | null {
  return stores.get(system)?.link ?? null
}

/** The epoch a remote system's mutations carry now (null for a local one). */
export function remoteEpoch(system: StorageSystem): number | null {
  return stores.get(system)?.epoch ?? null
}

/** Raises the server's fence to `epoch` and makes this daemon's mutations carry it; NOT_SUPPORTED for a local system. */
export async function fenceRemoteSystem(system: StorageSystem, epoch: number): Promise<number> {
  const store = stores.get(system)
  if (!store) throw new VvfsError('NOT_SUPPORTED', `storage system ${system.name} is local: only a storage server keeps a fence`)
  return store.fence(epoch)
}

/** Issue 15: the remote store under a system, for the map log (lib/relay/map-log.ts); null for a local one. */
export function remoteStoreOf(system: StorageSystem): RemoteChunkStore | null {
  return stores.get(system) ?? null
}
