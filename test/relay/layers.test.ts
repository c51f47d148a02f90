/**
 * The ChunkLayer suite (layer.suite.ts) against every layer the stack
 * builder makes, each over a fresh stack from test/helpers/stack.ts.
 */
import { EXTENT_SIZE } from '../../lib/layout.js'
import { CopyBitmap } from '../../lib/migration/bitmap.js'
import { RetainedSources } from '../../lib/migration/retained.js'
import type { ChunkLayer } from '../../lib/relay/chunk-layer.js'
import { MemoryDurableLog } from '../../lib/replication/durable-log.js'
import { Journal } from '../../lib/replication/journal.js'
import { removeDir, tempDir } from '../helpers/daemon.js'
import { memorySystems, openStack, type Stack, type SystemFactory } from '../helpers/stack.js'
import { layerSuite, type LayerFactory } from './layer.suite.js'

/** Where the stacks' storage systems come from: in memory (the layers' logic, not LevelDB's, is under test). */
const systemsFrom: SystemFactory = memorySystems

function over(pick: (s: Stack) => Promise<ChunkLayer> | ChunkLayer): LayerFactory {
  return async ({ extents, capacity }) => {
    const dir = tempDir('vvfs-layer-')
    const stack = await openStack({ dir, systems: 1, capacity: capacity * EXTENT_SIZE, size: extents * EXTENT_SIZE, systemsFrom }, true)
    return {
      layer: await pick(stack),
      locks: stack.layers.locks,
      chunks: stack.volume.size / 4096,
      settle: () => stack.thin.settle(),
      async close() {
        await stack.close()
        removeDir(dir)
      },
    }
  }
}

layerSuite('ThinLayer', over((s) => s.thin))
layerSuite('MigrateLayer', over((s) => s.layers.migrate))
layerSuite(
  'MigrateLayer tracking a job (dirty bits for every extent it holds)',
  over(async (s) => {
    const retained = new RetainedSources(s.maps, 1)
    for (let e = 0; e < 4; e++) retained.hold(1, e, { kind: 'fragments', frags: new Map() })
    s.layers.migrate.tracking = { retained, dirty: await CopyBitmap.load(s.maps, 'dirty', 1, 1) }
    return s.layers.migrate
  }),
)
layerSuite('ReadAhead', over((s) => s.layers.readAhead!))
layerSuite(
  'JournalLayer journaling every change (issue 13)',
  over(async (s) => {
    s.layers.journal.attach(await Journal.open(new MemoryDurableLog(), { epoch: 1 }))
    return s.layers.journal
  }),
)
