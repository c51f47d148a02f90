/**
 * CLI commands for relays in a cluster (issue 15): `vvfs relay list`
 * (the daemon must run with --etcd; otherwise NOT_SUPPORTED).
 */
import type { Argv } from 'yargs'
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
