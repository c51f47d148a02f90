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
    'storage.list': async () => ({ storage: await manager.listStorageWithDisk() }),
    'storage.compact': (p) => manager.compactStorage(p), // issue 17
    'storage.remove': (p) => manager.removeStorage(p.name),
    'storage.fence': (p) => manager.fenceStorage(p), // issue 14
    'host.add': (p) => manager.addHost(p),
    'host.list': async () => ({ hosts: manager.listHosts() }),
    'host.remove': (p) => manager.removeHost(p.name),
    'host.remount': (p) => manager.remountHost(p.name),
    'volume.create': (p) => manager.createVolume(p),
    'volume.list': async () => ({ volumes: manager.listVolumes() }),
    'volume.show': async (p) => manager.showVolume(p.name, p.extents),
    'volume.resize': (p) => manager.resizeVolume(p.name, p.size),
    'volume.delete': (p) => manager.deleteVolume(p.name),
    'volume.map': (p) => manager.mapVolume(p.name, p.host),
    'volume.unmap': (p) => manager.unmapVolume(p.name, p.host),
    'volume.mapOf': (p) => manager.mapOf(p.name, p.offset),
    'volume.reclaim': (p) => manager.reclaim(p.name, { dryRun: p.dryRun ?? false, force: p.force ?? false }),
    'pool.status': async () => manager.poolStatus(),
    'pool.set': (p) => manager.setPool(p),
    'storage.drain': (p) => manager.drain(p),
    'storage.undrain': (p) => manager.undrain(p.name),
    'migrate.start': (p) => manager.migrate(p),
    // issue 13: replication
    'replicate.start': (p) => manager.replicateStart(p),
    'replicate.stop': (p) => manager.replicateVerb('stop', p.pair),
    'replicate.pause': (p) => manager.replicateVerb('pause', p.pair),
    'replicate.resume': (p) => manager.replicateVerb('resume', p.pair),
    'replicate.status': async (p) => ({ pairs: p.pair === undefined ? manager.replication.list() : manager.replication.status(p.pair) }),
    'replicate.list': async () => ({ pairs: manager.replication.list() }),
    // issue 13.7: failover and failback
    'replicate.promote': (p) => manager.replicateFailover('promote', p),
    'replicate.demote': (p) => manager.replicateFailover('demote', p),
    'replicate.reverse': (p) => manager.replicateFailover('reverse', p),
    'replicate.resolve': (p) => manager.replicateFailover('resolve', p),
    'migrate.plan': async () => {
      const plan = manager.jobs.plan()
      return { policy: manager.consolidationPolicy(), moves: plan.moves.map(({ volume, to, trigger, reason }) => ({ volume, to, trigger, reason })), findings: plan.findings }
    },
    'migrate.policy': (p) => manager.policy(p),
    'migrate.rollback': async (p) => manager.jobs.rollback(p.id),
    'job.list': async () => ({ jobs: manager.jobs.list() }),
    'job.show': async (p) => manager.jobs.show(p.id),
    'job.pause': async (p) => manager.jobs.pause(p.id),
    'job.resume': async (p) => manager.jobs.resume(p.id),
    'job.cancel': async (p) => manager.jobs.cancel(p.id),
    'fault.add': async (p) => manager.addFault({ storage: p.storage, op: p.op, error: p.error, delayMs: p.delay, probability: p.probability, after: p.after, count: p.count, seed: p.seed }),
    'fault.list': async () => ({ faults: manager.listFaults() }),
    'fault.clear': async (p) => ({ cleared: manager.clearFaults(p.id) }),
    'relay.list': async () => ({ relays: await manager.relays() }), // issue 15
    'volume.move': (p) => manager.moveVolume(p.name, p.relay), // issue 15
    'events.subscribe': async (p, ctx) => {
      const types = p.types?.length ? p.types : EventType.options
      ctx.subscribe(types)
      return { subscribed: types }
    },
  }
}
