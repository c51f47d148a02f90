/**
 * The manager's side of the control protocol: one handler per method of
 * lib/control/schema.ts, each a thin call into the Manager. Params arrive
 * validated; results are checked against the schema by the type system.
 */
import { EventType, type Handlers } from '../control/schema.js'
import { VERSION } from '../version.js'
import type { Manager } from './manager.js'

export function managerHandlers(manager: Manager, socketPath: string): Handlers {
  return {
    status: async () => ({ version: VERSION, pid: process.pid, socket: socketPath, ...manager.status() }),
    'storage.add': (p) => manager.addStorage(p),
    'storage.list': async () => ({ storage: manager.listStorage() }),
    'storage.remove': (p) => manager.removeStorage(p.name),
    'host.add': (p) => manager.addHost(p),
    'host.list': async () => ({ hosts: manager.listHosts() }),
    'host.remove': (p) => manager.removeHost(p.name),
    'volume.create': (p) => manager.createVolume(p),
    'volume.list': async () => ({ volumes: manager.listVolumes() }),
    'volume.show': async (p) => manager.showVolume(p.name),
    'volume.resize': (p) => manager.resizeVolume(p.name, p.size),
    'volume.delete': (p) => manager.deleteVolume(p.name),
    'volume.map': (p) => manager.mapVolume(p.name, p.host),
    'volume.unmap': (p) => manager.unmapVolume(p.name, p.host),
    'pool.status': async () => manager.poolStatus(),
    'pool.set': (p) => manager.setPool(p),
    'events.subscribe': async (p, ctx) => {
      const types = p.types?.length ? p.types : EventType.options
      ctx.subscribe(types)
      return { subscribed: types }
    },
  }
}
