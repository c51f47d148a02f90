/**
 * CLI commands for injected storage faults: `vvfs fault add|list|clear`
 * (the daemon must run with --allow-faults; otherwise FAULTS_DISABLED).
 */
import type { Argv } from 'yargs'
import type { FaultInfo } from '../control/schema.js'
import { FAULT_EFFECTS, FAULT_OPS } from '../storage/fault-injector.js'
import type { Call, Common, Print } from './jobs.js'
import { table } from './output.js'

function faultRows(faults: FaultInfo[]): string {
  if (faults.length === 0) return 'no faults'
  return table(
    ['ID', 'STORAGE', 'OP', 'ERROR', 'PROBABILITY', 'AFTER', 'COUNT', 'SEED', 'SEEN', 'INJECTED', 'STATE'],
    faults.map((f) => [
      f.id,
      f.storage,
      f.op,
      f.error === 'delay' ? `delay ${f.delayMs}ms` : f.error,
      f.probability,
      f.after,
      f.count ?? '-',
      f.seed,
      f.seen,
      f.injected,
      f.active ? 'active' : 'spent',
    ]),
  )
}

export function faultCommands<T>(y: Argv<T>, call: Call, print: Print) {
  return y.command('fault', 'inject I/O errors or delays into storage systems (daemon --allow-faults)', (y) =>
    y
      .command(
        'add',
        'add a fault rule',
        (y) =>
          y
            .option('storage', { type: 'string', demandOption: true, describe: 'storage system' })
            .option('op', { choices: FAULT_OPS, demandOption: true, describe: 'which operations fail' })
            .option('error', { choices: FAULT_EFFECTS, demandOption: true, describe: 'EIO, ENOSPC, or a delay' })
            .option('delay', { type: 'string', describe: 'with --error delay: how long (default 200ms)' })
            .option('probability', { type: 'number', describe: 'chance per matching operation, 0-1 (default 1)' })
            .option('after', { type: 'number', describe: 'let the first N matching operations pass' })
            .option('count', { type: 'number', describe: 'inject at most N times' })
            .option('seed', { type: 'number', describe: 'seed of the rule\'s generator (same seed, same faults)' }),
        async (argv) => {
          const f = await call(argv as unknown as Common, (c) =>
            c.call('fault.add', { storage: argv.storage, op: argv.op, error: argv.error, delay: argv.delay, probability: argv.probability, after: argv.after, count: argv.count, seed: argv.seed }),
          )
          print(argv as unknown as Common, f, () => `fault ${f.id}: ${f.error === 'delay' ? `delay ${f.delayMs}ms` : f.error} on ${f.op} of storage system ${f.storage} (seed ${f.seed})`)
        },
      )
      .command('list', 'list fault rules', (y) => y, async (argv) => {
        const r = await call(argv as unknown as Common, (c) => c.call('fault.list', {}))
        print(argv as unknown as Common, r, () => faultRows(r.faults))
      })
      .command('clear [id]', 'remove one fault rule, or all', (y) => y.positional('id', { type: 'number', describe: 'rule id (default: all)' }), async (argv) => {
        const r = await call(argv as unknown as Common, (c) => c.call('fault.clear', { id: argv.id }))
        print(argv as unknown as Common, r, () => (r.cleared.length ? `cleared fault ${r.cleared.join(', ')}` : 'no faults to clear'))
      })
      .demandCommand(1),
  )
}
