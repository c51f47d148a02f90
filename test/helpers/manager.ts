/**
 * A Manager in-process, without FUSE mounts: the whole control plane and
 * relay stack over real LevelDB stores, driven directly (host I/O through
 * VolumeHandle, as the FUSE layer does).
 */
import { join } from 'node:path'
import { silentLogger } from '../../lib/log.js'
import { Manager } from '../../lib/manager/manager.js'
import { parseSize } from '../../lib/units.js'

export async function openManager(dir: string): Promise<Manager> {
  return Manager.open({ stateDir: join(dir, 'state'), mountDir: join(dir, 'mnt'), log: silentLogger(), mount: false })
}

export async function withSystems(m: Manager, systems: [string, string][]): Promise<void> {
  for (const [name, capacity] of systems) await m.addStorage({ name, capacity: parseSize(capacity) })
}
