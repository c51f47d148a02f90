/**
 * CLI commands for replication (issue 13): `vvfs replicate start|stop|pause|
 * resume|status|list`, and failover (13.7) `promote|demote|reverse|resolve`.
 * Thin clients of the control socket's replicate.* methods; --json prints
 * the schema's ReplicationInfo; --wait follows a sync (replicate-wait.ts).
 */
import { resolve as resolvePath } from 'node:path'
import type { Argv } from 'yargs'
import type { ReplicationInfo } from '../control/schema.js'
import { formatSize } from '../units.js'
import type { Call, Common, Print } from './jobs.js'
import { fields, table } from './output.js'
import { waitForPairSync } from './replicate-wait.js'

function rows(pairs: ReplicationInfo[]): string {
  if (pairs.length === 0) return 'no replication pairs'
  return table(
    ['PAIR', 'ROLE', 'VOLUME', 'PEER', 'STATE', 'LINK', 'EPOCH', 'WRITTEN', 'APPLIED', 'LAG', 'LAG-BYTES', 'LAG-S', 'JOURNAL'],
    pairs.map((p) => [
      p.pair,
      p.role,
      p.volume,
      p.peer,
      p.state,
      p.link,
      p.epoch,
      p.lastWritten,
      p.lastApplied,
      p.lag.entries,
      formatSize(p.lag.bytes),
      p.lag.seconds.toFixed(2),
      p.role === 'primary' ? `${formatSize(p.journal.usedBytes)}/${formatSize(p.journal.limitBytes)} ${p.journal.mode}` : '-',
    ]),
  )
}

function detail(p: ReplicationInfo): string {
  return fields([
    ['pair', p.pair],
    ['role', p.role],
    ['volume', p.volume],
    ['group', p.group ?? '-'],
    ['peer', p.peer],
    ['state', p.state],
    ['link', p.link],
    ['consistent', p.consistent ? 'yes' : 'no'],
    ['epoch', p.epoch],
    ['written / durable / shipped / applied', `${p.lastWritten} / ${p.lastDurable} / ${p.lastShipped} / ${p.lastApplied}`],
    ['lag', `${p.lag.entries} entries, ${formatSize(p.lag.bytes)}, ${p.lag.seconds.toFixed(3)} s`],
    ['journal', `${p.journal.mode}, ${formatSize(p.journal.usedBytes)} of ${formatSize(p.journal.limitBytes)}, ${p.journal.entries} entries, ${p.journal.dirtyExtents} dirty extents`],
    ['rate', `${formatSize(p.rate)}/s`],
    ['sync', p.sync.total ? `${formatSize(p.sync.copied)} of ${formatSize(p.sync.total)}` : '-'],
    ['last error', p.lastError ? `${p.lastError.code}: ${p.lastError.message}` : '-'],
    ...(p.promotedAt !== undefined ? ([['promoted at', `${p.promotedAt} (every volume of the pair holds the old primary's writes 1..${p.promotedAt})`]] as [string, string][]) : []),
    ...failoverFields(p),
  ])
}

/** Issue 13.7: the failover view's lines (absent when the pair has none). */
function failoverFields(p: ReplicationInfo): [string, string | number][] {
  const f = p.failover
  if (!f) return []
  const peer = f.peer ? `${f.peer.role}, epoch ${f.peer.epoch}, last ${f.peer.lastSeq} (reported ${f.peer.seenSecondsAgo} s ago)` : 'no report'
  const relation = f.relation === 'split-brain' ? `SPLIT-BRAIN: both sides written after ${f.commonSeq} — vvfs replicate resolve ${p.pair} --discard local|peer` : f.relation
  return [
    ['failover role', `${f.role}, last ${f.lastSeq}`],
    ['peer', peer],
    ['histories', relation],
  ]
}

export function replicationCommands<T>(y: Argv<T>, call: Call, print: Print) {
  const verb = (name: 'stop' | 'pause' | 'resume', what: string) =>
    [
      `${name} <pair>`,
      what,
      (y: Argv) => y.positional('pair', { type: 'string', demandOption: true }),
      async (argv: { pair?: string }) => {
        const method = `replicate.${name}` as const
        const r = await call(argv as unknown as Common, (c) => c.call(method, { pair: argv.pair! }))
        print(argv as unknown as Common, r, () => `pair ${r.pair}: ${r.state}`)
      },
    ] as const
  return y.command('replicate', 'replicate volumes to another vvfs daemon (asynchronous, in write order)', (y) =>
    y
      .command(
        'start <volume> [more..]',
        'start replicating a volume (or, with --group, several sharing one sequence) to a peer daemon (vvfs daemon --listen ADDR:PORT there)',
        (y) =>
          y
            .positional('volume', { type: 'string', demandOption: true })
            .positional('more', { type: 'string', array: true, describe: 'further volumes of the consistency group' })
            .option('group', { type: 'string', describe: 'a consistency group: its volumes share one sequence, so their secondaries are one point in time together' })
            .option('to', { type: 'string', demandOption: true, describe: 'the peer daemon\'s ADDR:PORT' })
            .option('as', { type: 'string', describe: 'the pair\'s and the secondary volume\'s name there (default: the volume\'s)' })
            .option('peer-key', { type: 'string', describe: 'pre-shared key file (default: the daemon\'s --peer-key)' })
            .option('rate', { type: 'string', describe: 'copy rate limit of the initial sync and resyncs, e.g. 50M (per second)' })
            .option('journal-limit', { type: 'string', describe: 'journal size limit (default 1G)' })
            .option('journal-policy', { choices: ['bitmap', 'throttle'] as const, describe: 'at the limit: track dirty extents (bitmap, default) or slow host writes (throttle)' })
            .option('wait', { type: 'boolean', default: false, describe: 'follow the initial sync with a progress bar; return once replicating' }),
        async (argv) => {
          const r = await call(argv as unknown as Common, async (c) => {
            const started = await c.call('replicate.start', {
              volume: argv.volume!,
              also: argv.more?.length ? argv.more.map(String) : undefined,
              group: argv.group,
              to: argv.to,
              as: argv.as,
              peerKey: argv['peer-key'] === undefined ? undefined : resolvePath(argv['peer-key']),
              rate: argv.rate,
              journalLimit: argv['journal-limit'],
              journalPolicy: argv['journal-policy'],
            })
            return argv.wait ? waitForPairSync(c, started.pair, argv.json as boolean) : started
          })
          print(argv as unknown as Common, r, () => `pair ${r.pair}: ${r.volume} → ${r.peer} (job ${r.job}), ${r.state}`)
        },
      )
      .command(...verb('stop', 'stop a pair (the journal is dropped; the secondary keeps its read-only volume)'))
      .command(...verb('pause', 'pause shipping'))
      .command(...verb('resume', 'resume shipping'))
      .command(
        'status [pair]',
        'state, sequence numbers, lag and journal use of one pair (or all)',
        (y) =>
          y
            .positional('pair', { type: 'string' })
            .option('wait', { type: 'boolean', default: false, describe: 'follow a sync or resync of PAIR with a progress bar; return once replicating' })
            .check((a) => !a.wait || a.pair !== undefined || 'status --wait needs a pair'),
        async (argv) => {
          const r = await call(argv as unknown as Common, async (c) => {
            if (argv.wait) await waitForPairSync(c, argv.pair!, argv.json as boolean)
            return c.call('replicate.status', { pair: argv.pair })
          })
          print(argv as unknown as Common, r, () => (argv.pair ? r.pairs.map(detail).join('\n\n') : rows(r.pairs)))
        },
      )
      .command('list', 'every pair of this daemon', (y) => y, async (argv) => {
        const r = await call(argv as unknown as Common, (c) => c.call('replicate.list', {}))
        print(argv as unknown as Common, r, () => rows(r.pairs))
      })
      // issue 13.7: failover and failback
      .command(
        'promote <pair>',
        'on the secondary: make the pair\'s volume (a group\'s volumes, together) writable (a new epoch); refused while the primary is reachable and the pair healthy',
        (y) => y.positional('pair', { type: 'string', demandOption: true }).option('force', { type: 'boolean', describe: 'promote even so (split-brain if both sides are then written)' }),
        async (argv) => {
          const r = await call(argv as unknown as Common, (c) => c.call('replicate.promote', { pair: argv.pair!, force: argv.force }))
          print(argv as unknown as Common, r, () => `pair ${r.pair}: ${r.volume} promoted (epoch ${r.epoch}), ${r.state}`)
        },
      )
      .command(
        'demote <pair>',
        'on the primary: make the volume (a group\'s volumes, together) read-only and stop shipping (after the secondary applied what it can)',
        (y) => y.positional('pair', { type: 'string', demandOption: true }),
        async (argv) => {
          const r = await call(argv as unknown as Common, (c) => c.call('replicate.demote', { pair: argv.pair! }))
          print(argv as unknown as Common, r, () => `pair ${r.pair}: ${r.volume} demoted, read-only`)
        },
      )
      .command(
        'reverse <pair>',
        'on the promoted side: the old primary becomes the replica; ships only what differs',
        (y) =>
          y
            .positional('pair', { type: 'string', demandOption: true })
            .option('to', { type: 'string', describe: 'the old primary\'s ADDR:PORT (default: the address it reported)' })
            .option('peer-key', { type: 'string', describe: 'pre-shared key file (default: the daemon\'s --peer-key)' }),
        async (argv) => {
          const r = await call(argv as unknown as Common, (c) =>
            c.call('replicate.reverse', { pair: argv.pair!, to: argv.to, peerKey: argv['peer-key'] === undefined ? undefined : resolvePath(argv['peer-key']) }),
          )
          print(argv as unknown as Common, r, () => `pair ${r.pair}: ${r.volume} → ${r.peer} (job ${r.job}), ${r.state}`)
        },
      )
      .command(
        'resolve <pair>',
        'on the promoted side, after a split-brain: discard one side\'s changes and resync',
        (y) =>
          y
            .positional('pair', { type: 'string', demandOption: true })
            .option('discard', { choices: ['local', 'peer'] as const, demandOption: true, describe: 'whose changes since the split go: local (this side becomes the replica again) or peer' })
            .option('to', { type: 'string', describe: 'the peer\'s ADDR:PORT (default: the address it reported)' })
            .option('peer-key', { type: 'string', describe: 'pre-shared key file (default: the daemon\'s --peer-key)' }),
        async (argv) => {
          const r = await call(argv as unknown as Common, (c) =>
            c.call('replicate.resolve', { pair: argv.pair!, discard: argv.discard, to: argv.to, peerKey: argv['peer-key'] === undefined ? undefined : resolvePath(argv['peer-key']) }),
          )
          print(argv as unknown as Common, r, () => `pair ${r.pair}: ${argv.discard} changes discarded; ${r.volume} is ${r.role}, ${r.state}`)
        },
      )
      .demandCommand(1),
  )
}
