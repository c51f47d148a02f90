/**
 * CLI commands for relays in a cluster (issue 15): `vvfs relay list`,
 * `vvfs volume move NAME --relay R` (the daemon must run with --etcd;
 * otherwise NOT_SUPPORTED).
 */
import type { Argv, CommandModule } from 'yargs'
import type { Call, Common, Print } from '../cli/jobs.js'
import { table } from '../cli/output.js'
import type { Result } from '../control/schema.js'

function relayRows(relays: Result<'relay.list'>['relays']): string {
  if (relays.length === 0) return 'no relays'
  return table(
    ['RELAY', 'HOST', 'PID', 'LEASE', 'TTL LEFT', 'VOLUMES (TOKEN)'],
    relays.map((r) => [
      r.self ? `${r.relay} *` : r.relay,
      r.host,
      r.pid,
      BigInt(r.lease).toString(16),
      r.leaseTtlMs < 0 ? 'expired' : `${(r.leaseTtlMs / 1000).toFixed(0)}s`,
      r.volumes.map((v) => `${v.name} (${v.token})`).join(', ') || '-',
    ]),
  )
}

export function relayCommands<T>(y: Argv<T>, call: Call, print: Print) {
  return y.command('relay', 'the relays of a cluster (daemon --etcd)', (y) =>
    y.command('list', 'relays, their leases and the volumes each owns (* this daemon)', (y) => y, async (argv) => {
      const r = await call(argv as unknown as Common, (c) => c.call('relay.list', {}))
      print(argv as unknown as Common, r, () => relayRows(r.relays))
    }).demandCommand(1, 'name a relay command (list)'),
  )
}

/** `vvfs volume move NAME --relay R` (a subcommand of `vvfs volume`): sent to the relay that owns the volume (its --socket). */
export function volumeMoveCommand(call: Call, print: Print): CommandModule<object, { name: string; relay: string }> {
  return {
    command: 'move <name>',
    describe: 'hand a volume over to another relay of the cluster (graceful: drained, map log synced, released, taken)',
    builder: (y) => y.positional('name', { type: 'string', demandOption: true }).option('relay', { type: 'string', demandOption: true, describe: 'the relay that takes it' }),
    handler: async (argv) => {
      const r = await call(argv as unknown as Common, (c) => c.call('volume.move', { name: argv.name, relay: argv.relay }))
      print(argv as unknown as Common, r, () => `volume ${r.volume} moved from relay ${r.from} to relay ${r.to} (token ${r.token}); not served for ${r.gapMs} ms`)
    },
  }
}
