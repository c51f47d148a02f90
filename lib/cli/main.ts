/**
 * The vvfs CLI (yargs). `vvfs daemon` runs the daemon; every other command is
 * a thin client of the control socket: it sends one request and prints the
 * result as a table (or as JSON with --json). Exit status: 0 done, 1 the
 * daemon refused or failed (the error's code is printed), 2 bad usage.
 */
import { resolve as resolvePath } from 'node:path'
import yargs, { type Argv } from 'yargs'
import { hideBin } from 'yargs/helpers'
import { ControlClient } from '../control/client.js'
import { METHODS, type MethodName, type ParamsInput, type Result } from '../control/schema.js'
import { asVvfsError, VvfsError } from '../errors.js'
import { LOG_FORMATS, LOG_LEVELS, type LogLevel } from '../log.js'
import { checkName, formatSize, parseDuration, parseSize } from '../units.js'
import type { ClusterOptions } from '../cluster/options.js'
import { relayCommands, volumeMoveCommand } from '../cluster/cli.js'
import { fields, table } from './output.js'
import { copyOptions, migrationCommands, startedJob } from './jobs.js'
import { COMPLETION_KEY, namesToComplete } from './completion.js'
import { faultCommands } from './faults.js'
import { replicationCommands } from './replicate.js'
import { watch, watchOptions } from './watch.js'

interface Common {
  socket: string
  json: boolean
}

const DEFAULT_SOCKET = process.env.VVFS_SOCKET ?? './.vvfs/control.sock'

async function withClient<T>(argv: Common, run: (c: ControlClient) => Promise<T>): Promise<T> {
  const client = await ControlClient.connect(argv.socket)
  try {
    return await run(client)
  } finally {
    client.close()
  }
}

function call<M extends MethodName>(argv: Common, method: M, params: ParamsInput<M>): Promise<Result<M>> {
  return withClient(argv, (c) => c.call(method, params))
}

function print(argv: Common, result: unknown, human: () => string): void {
  process.stdout.write((argv.json ? JSON.stringify(result, null, 2) : human()) + '\n')
}

const pct = (n: number) => `${n.toFixed(1)}%`

function volumeRows(volumes: Result<'volume.list'>['volumes']) {
  return table(
    ['NAME', 'SIZE', 'ALLOCATED', 'USE%', 'HOSTS', 'STATE', 'ID'],
    volumes.map((v) => [v.name, formatSize(v.size), formatSize(v.allocated), pct((100 * v.allocated) / Math.max(1, v.size)), v.hosts.join(',') || '-', v.state, v.id]),
  )
}

function storageRows(storage: Result<'storage.list'>['storage']) {
  return table(
    ['NAME', 'ROLE', 'CAPACITY', 'ALLOCATED', 'FREE', 'USE%', 'DISK', 'LARGEST-FREE-RUN', 'VOLUMES', 'PATH', 'LINK', 'RTT'],
    storage.map((s) => [
      s.name,
      s.role,
      formatSize(s.capacity),
      formatSize(s.allocated),
      formatSize(s.free),
      pct(s.usedPercent),
      s.diskBytes === null || s.diskBytes === undefined ? '-' : formatSize(s.diskBytes),
      formatSize(s.largestFreeRun),
      s.volumes.join(',') || '-',
      s.path,
      s.connection,
      s.rttMs === null ? '-' : `${s.rttMs.toFixed(2)} ms`,
    ]),
  )
}

function poolText(p: Result<'pool.status'>): string {
  const rows = p.systems.map((s) => [s.name, formatSize(s.capacity), formatSize(s.allocated), formatSize(s.free), pct(s.usedPercent), formatSize(s.largestFreeRun), `${s.overcommit.toFixed(2)}x`])
  rows.push(['TOTAL', formatSize(p.capacity), formatSize(p.allocated), formatSize(p.free), pct(p.usedPercent), formatSize(p.largestFreeRun), `${p.overcommit.toFixed(2)}x`])
  return (
    table(['STORAGE', 'CAPACITY', 'ALLOCATED', 'FREE', 'USE%', 'LARGEST-FREE-RUN', 'OVERCOMMIT'], rows) +
    '\n\n' +
    fields([
      ['warning threshold', `${p.warnPercent}%`],
      ['when full', p.fullMode === 'queue' ? `queue writers up to ${p.queueTimeoutMs / 1000}s, then ENOSPC` : 'ENOSPC at once'],
      ['queued writers', p.queuedWriters],
      ['volume sizes', formatSize(p.volumeBytes)],
    ])
  )
}

/** `status`'s memory line: the process, then the storage systems' budget and each one's share. */
export function memoryLine(m: Result<'status'>['memory']): string {
  const process = `${formatSize(m.rss)} resident (peak ${formatSize(m.peakRss)}), JS heap ${formatSize(m.heapUsed)} of ${formatSize(m.heapTotal)}`
  if (m.stores === 0) return `${process}; storage budget ${formatSize(m.budget)}, no local storage systems`
  const share = `${formatSize(m.writeBufferSize)} write buffers, ${formatSize(m.cacheSize)} caches`
  return `${process}; storage budget ${formatSize(m.budget)} over ${m.stores} local systems, ${formatSize(m.held)} held (${share}${m.overBudget ? ', OVER the budget at their floors' : ''})`
}

function volumeText(v: Result<'volume.show'>, perExtent: boolean): string {
  const head = fields([
    ['name', v.name],
    ['id', v.id],
    ['size', `${formatSize(v.size)} (${v.size} bytes)`],
    ['allocated', `${formatSize(v.allocated)} (${v.allocated} bytes)`],
    ['state', v.state],
    ['hosts', v.hosts.join(', ') || '-'],
    ['files', v.files.join(', ') || '-'],
    ['created', v.createdAt],
    ['extents', v.extents],
  ])
  const by = v.allocatedBySystem.length ? '\n\n' + table(['STORAGE', 'ALLOCATED'], v.allocatedBySystem.map((s) => [s.storage, formatSize(s.allocated)])) : ''
  const map = !v.map.length
    ? '\n\nno extent allocated (the volume reads as zeros)'
    : perExtent && v.extentMap
      ? '\n\n' + table(['EXTENT', 'OFFSET', 'STORAGE', 'KIND', 'SLOT/FRAGMENTS'], v.extentMap.map((e) => [e.extent, formatSize(e.offset), e.storage, e.kind, e.kind === 'whole' ? `slot ${e.slot}` : `${e.fragments} fragments`]))
      : '\n\n' + table(['OFFSET', 'LENGTH', 'EXTENTS', 'STORAGE', 'KIND'], v.map.map((r) => [formatSize(r.offset), formatSize(r.length), r.extents, r.storage, r.kind]))
  return head + by + map
}

function withCommon<T>(y: Argv<T>) {
  return y
    .option('socket', { type: 'string', default: DEFAULT_SOCKET, describe: 'control socket ($VVFS_SOCKET)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON' })
}

/**
 * Operands after `--` (a name starting with a dash, from an older state:
 * `vvfs volume delete -- -rf`). yargs re-parses positionals as options, so
 * `-rf` would turn into two flags and the name go missing: each operand
 * passes the parser as a placeholder (NUL cannot be in an argument) and is
 * put back before the command runs.
 */
const OPERAND = '\u0000operand'

function hideOperands(args: string[]): { args: string[]; restore: (argv: Record<string, unknown>) => void } {
  const at = args.indexOf('--')
  // While completing, a `--` is the word being completed, not the end of the options.
  if (at < 0 || args[0] === COMPLETION_KEY) return { args, restore: () => {} }
  const operands = args.slice(at + 1)
  const back = (v: unknown): unknown => (typeof v === 'string' && v.startsWith(OPERAND) ? operands[Number(v.slice(OPERAND.length))] : v)
  return {
    args: [...args.slice(0, at), ...operands.map((_, i) => `${OPERAND}${i}`)],
    restore: (argv) => {
      for (const [key, value] of Object.entries(argv)) argv[key] = Array.isArray(value) ? value.map(back) : back(value)
    },
  }
}

export function buildCli(rawArgs: string[]) {
  const { args, restore } = hideOperands(rawArgs)
  const cli = withCommon(yargs(args))
    .middleware(restore)
    .scriptName('vvfs')
    .usage('$0 <command>\n\nvvfs serves thin virtual volumes as files in a FUSE mount.')
    .command(
      'daemon',
      'run the daemon in the foreground',
      (y) =>
        y
          .option('state', { type: 'string', default: './.vvfs', describe: 'state directory' })
          .option('mount', { type: 'string', default: './mnt', describe: 'mount directory of the default host "local"' })
          .option('log-level', { choices: LOG_LEVELS, default: 'info' as LogLevel })
          .option('log-format', { choices: LOG_FORMATS, describe: 'json, or pretty (one human line per event); default: pretty when stderr is a terminal' })
          .option('demo', { type: 'boolean', default: false, describe: 'on a new state: three 4 GiB storage systems and a 1 GiB volume "demo"' })
          .option('allow-faults', { type: 'boolean', default: false, describe: 'accept `vvfs fault …` (I/O-error injection, for tests)' })
          .option('compact-idle', { type: 'string', default: '30s', describe: 'compact a local store this long after its last write when it takes more than 1.2 bytes on disk per allocated byte (0: never)' })
          .option('memory', { type: 'string', default: '192M', describe: 'memory for the local storage systems\' LevelDB memtables and block caches, shared by all of them (issue 17)' })
          .option('http', { type: 'string', describe: 'serve the read-only web view at HOST:PORT, or PORT on 127.0.0.1 (off unless given)' })
          .option('http-token', { type: 'string', describe: 'file holding the token every web view request must carry (required when --http is not loopback)' })
          .option('listen', { type: 'string', describe: 'accept replication peers at ADDR:PORT (no default address; needs --peer-key)' })
          .option('peer-key', { type: 'string', describe: 'file with the replication peers\' pre-shared key (mode 0600, at least 32 bytes)' })
          // issue 15: several relays, one catalog
          .option('etcd', { type: 'string', describe: 'join a cluster: the catalog, leases and ownership in etcd at these client URLs (comma-separated)' })
          .option('relay-id', { type: 'string', describe: 'this relay\'s name in the cluster (with --etcd)' })
          .option('standby', { type: 'boolean', default: false, describe: 'take no volumes at start; take over those whose owner\'s lease expires (with --etcd)' })
          .option('lease-ttl', { type: 'string', default: '5s', describe: 'TTL of this relay\'s etcd lease (with --etcd)' }),
      async (argv) => {
        const { runDaemon } = await import('../daemon.js')
        const socket = argv.socket === DEFAULT_SOCKET && !process.env.VVFS_SOCKET ? undefined : argv.socket
        process.exitCode = await runDaemon({
          state: argv.state,
          mount: argv.mount,
          socket,
          logLevel: argv['log-level'] as LogLevel,
          logFormat: argv['log-format'],
          demo: argv.demo,
          allowFaults: argv['allow-faults'],
          compactIdleMs: parseDuration(argv['compact-idle'], '--compact-idle'),
          memoryBytes: parseSize(argv.memory, '--memory'),
          http: argv.http,
          httpToken: argv['http-token'],
          listen: argv.listen,
          peerKey: argv['peer-key'],
          cluster: clusterOptions(argv),
        })
      },
    )
    .command('status', 'daemon status', (y) => y, async (argv) => {
      const s = await call(argv, 'status', {})
      print(argv, s, () =>
        fields([
          ['version', s.version],
          ['pid', s.pid],
          ['state', s.stateDir],
          ['socket', s.socket],
          ['up', `${s.uptimeSeconds}s (since ${s.startedAt})`],
          ['pool', `${formatSize(s.pool.allocated)} allocated of ${formatSize(s.pool.capacity)}, ${formatSize(s.pool.free)} free`],
          ['storage systems', s.storage],
          ['hosts', s.hosts],
          ['volumes', s.volumes],
          ['read cache', `${s.readCache.served} reads served, ${s.readCache.published} extents published`],
          ['memory', memoryLine(s.memory)],
        ]),
      )
    })
    .command('storage', 'storage systems', (y) =>
      y
        .command(
          'add <name>',
          'add a storage system',
          (y) =>
            y
              .positional('name', { type: 'string', demandOption: true })
              .option('capacity', { type: 'string', describe: 'e.g. 4G (required for a local system; a remote one defaults to the server\'s --capacity)' })
              .option('path', { type: 'string', describe: 'LevelDB directory (default STATE/storage/NAME)' })
              .option('reserve', { type: 'boolean', describe: 'designate it for staged transfers only (migrate --mode staged)' })
              // issue 14
              .option('remote', { type: 'string', describe: 'ADDR:PORT of a storage server (vvfs storage serve) to add instead of a local store' })
              .option('peer-key', { type: 'string', describe: 'file with the storage server\'s pre-shared key (with --remote)' }),
          async (argv) => {
            const peerKey = argv['peer-key'] === undefined ? undefined : resolvePath(argv['peer-key'])
            const s = await call(argv, 'storage.add', { name: argv.name, capacity: argv.capacity, path: argv.path, reserve: argv.reserve, remote: argv.remote, peerKey })
            print(argv, s, () => `added ${s.role === 'reserve' ? 'reserve ' : ''}storage system ${s.name}: ${formatSize(s.capacity)} at ${s.path}`)
          },
        )
        .command(
          'drain <name>',
          'move every extent off a storage system (a job), so it can be removed',
          (y) => copyOptions(y.positional('name', { type: 'string', demandOption: true })),
          async (argv) => {
            await withClient(argv, async (c) => startedJob(argv, c, await c.call('storage.drain', { name: argv.name, mode: argv.mode, keep: argv.keep, rate: argv.rate }), print))
          },
        )
        .command('undrain <name>', 'let a drained storage system take new allocations again', (y) => y.positional('name', { type: 'string', demandOption: true }), async (argv) => {
          const s = await call(argv, 'storage.undrain', { name: argv.name })
          print(argv, s, () => `storage system ${s.name} takes new allocations again`)
        })
        // issue 17
        .command(
          'compact <name>',
          'give back the disk space a local storage system holds for overwritten and deleted data',
          (y) => y.positional('name', { type: 'string', demandOption: true }).option('wait', { type: 'boolean', default: false, describe: 'return when done, with the bytes on disk before and after' }),
          async (argv) => {
            const r = await call(argv, 'storage.compact', { name: argv.name, wait: argv.wait })
            print(argv, r, () =>
              r.afterBytes === undefined || r.beforeBytes === undefined
                ? `compacting storage system ${r.storage} in the background (event storage.compacted when done)`
                : `storage system ${r.storage} ${r.completed === false ? 'partly compacted (stopped by shutdown)' : 'compacted'}: ${formatSize(r.beforeBytes)} → ${formatSize(r.afterBytes)} on disk in ${((r.ms ?? 0) / 1000).toFixed(1)} s`,
            )
          },
        )
        // ---- issue 14 (remote storage)
        .command(
          'fence <name>',
          'raise a storage server\'s fencing token: requests with a lower epoch are refused from then on',
          (y) => y.positional('name', { type: 'string', demandOption: true }).option('epoch', { type: 'number', demandOption: true, describe: 'the new token' }),
          async (argv) => {
            const s = await call(argv, 'storage.fence', { name: argv.name, epoch: argv.epoch })
            print(argv, s, () => `storage system ${s.name} at ${s.location}: fence ${s.fence}`)
          },
        )
        // the storage server runs in this process, not through the daemon
        .command(
          'serve',
          'run a storage server: one storage system served over TCP to relays holding the peer key (foreground; SIGTERM stops it)',
          (y) =>
            y
              .option('dir', { type: 'string', demandOption: true, describe: 'directory of the served storage system (created if new)' })
              .option('listen', { type: 'string', demandOption: true, describe: 'ADDR:PORT to listen on (no default address)' })
              .option('peer-key', { type: 'string', demandOption: true, describe: 'file with the pre-shared key (mode 0600, at least 32 bytes)' })
              .option('capacity', { type: 'string', describe: 'most bytes this server holds (e.g. 100G; default: no limit)' })
              .option('log-level', { choices: LOG_LEVELS, default: 'info' as LogLevel })
              .option('log-format', { choices: LOG_FORMATS }),
          async (argv) => {
            const { runStorageServer } = await import('../storage/remote/serve.js')
            process.exitCode = await runStorageServer({
              dir: argv.dir,
              listen: argv.listen,
              peerKey: argv['peer-key'],
              capacity: argv.capacity === undefined ? undefined : parseSize(argv.capacity, 'capacity'),
              logLevel: argv['log-level'] as LogLevel,
              logFormat: argv['log-format'],
            })
          },
        )
        // ---- end issue 14
        .command('list', 'list storage systems', (y) => y, async (argv) => {
          const r = await call(argv, 'storage.list', {})
          print(argv, r.storage, () => storageRows(r.storage))
        })
        .command('remove <name>', 'remove a storage system that holds no extents', (y) => y.positional('name', { type: 'string', demandOption: true }), async (argv) => {
          const r = await call(argv, 'storage.remove', { name: argv.name })
          print(argv, r, () => `removed storage system ${r.removed}`)
        })
        .demandCommand(1),
    )
    .command('host', 'hosts (FUSE mounts)', (y) =>
      y
        .command(
          'add <name>',
          'add a host',
          (y) => y.positional('name', { type: 'string', demandOption: true }).option('mount', { type: 'string', demandOption: true }),
          async (argv) => {
            const h = await call(argv, 'host.add', { name: argv.name, mount: argv.mount })
            print(argv, h, () => `added host ${h.name}, mounted at ${h.mount}`)
          },
        )
        .command('list', 'list hosts', (y) => y, async (argv) => {
          const r = await call(argv, 'host.list', {})
          print(argv, r.hosts, () => table(['NAME', 'MOUNT', 'MOUNTED', 'VOLUMES'], r.hosts.map((h) => [h.name, h.mount, h.mounted ? 'yes' : 'no', h.volumes.join(',') || '-'])))
        })
        .command('remove <name>', 'remove a host', (y) => y.positional('name', { type: 'string', demandOption: true }), async (argv) => {
          const r = await call(argv, 'host.remove', { name: argv.name })
          print(argv, r, () => `removed host ${r.removed}`)
        })
        .command('remount <name>', 'mount a host again after someone else unmounted it', (y) => y.positional('name', { type: 'string', demandOption: true }), async (argv) => {
          const h = await call(argv, 'host.remount', { name: argv.name })
          print(argv, h, () => `host ${h.name} is mounted at ${h.mount}`)
        })
        .demandCommand(1),
    )
    .command('volume', 'volumes', (y) =>
      y
        .command(
          'create <name>',
          'create a thin volume',
          (y) =>
            y
              .positional('name', { type: 'string', demandOption: true })
              .option('size', { type: 'string', demandOption: true, describe: 'e.g. 512M, 4G, 1T' })
              .option('host', { type: 'string', array: true, describe: 'hosts to map it to (default: local)' }),
          async (argv) => {
            const v = await call(argv, 'volume.create', { name: argv.name, size: argv.size, hosts: argv.host })
            print(argv, v, () => `created volume ${v.name}\nid    ${v.id}\nsize  ${formatSize(v.size)} (${v.size} bytes)\nfiles ${v.files.join(', ') || '-'}`)
          },
        )
        .command('list', 'list volumes', (y) => y, async (argv) => {
          const r = await call(argv, 'volume.list', {})
          print(argv, r.volumes, () => volumeRows(r.volumes))
        })
        .command(volumeMoveCommand(withClient, print)) // issue 15
        .command(
          'show <name>',
          'show a volume and its extent map (runs of consecutive extents on one storage system)',
          (y) =>
            y
              .positional('name', { type: 'string', demandOption: true })
              .option('extents', { type: 'boolean', default: false, describe: 'one row per extent instead of runs (--json has both)' }),
          async (argv) => {
            const v = await call(argv, 'volume.show', { name: argv.name, extents: argv.extents || argv.json })
            print(argv, v, () => volumeText(v, argv.extents))
          },
        )
        .command(
          'resize <name>',
          'grow or shrink a volume',
          (y) => y.positional('name', { type: 'string', demandOption: true }).option('size', { type: 'string', demandOption: true }),
          async (argv) => {
            const v = await call(argv, 'volume.resize', { name: argv.name, size: argv.size })
            print(argv, v, () => `volume ${v.name} is now ${formatSize(v.size)} (${v.size} bytes)`)
          },
        )
        .command('delete <name>', 'delete a volume', (y) => y.positional('name', { type: 'string', demandOption: true }), async (argv) => {
          const r = await call(argv, 'volume.delete', { name: argv.name })
          print(argv, r, () => `deleted volume ${r.deleted}, released ${formatSize(r.released)}`)
        })
        .command(
          'reclaim <name>',
          'release what the ext4 file system on a volume marks free (no discard needed)',
          (y) =>
            y
              .positional('name', { type: 'string', demandOption: true })
              .option('dry-run', { type: 'boolean', default: false, describe: 'report what would be freed, free nothing' })
              .option('force', { type: 'boolean', default: false, describe: 'the volume is open for writing but its file system is frozen (fsfreeze -f)' }),
          async (argv) => {
            const r = await call(argv, 'volume.reclaim', { name: argv.name, dryRun: argv['dry-run'], force: argv.force })
            print(argv, r, () =>
              fields([
                ['volume', r.volume],
                ['file system', `ext4 ${r.uuid}${r.label ? ` "${r.label}"` : ''}, ${r.blockSize}-byte blocks`],
                ['free in ext4', formatSize(r.fsFreeBytes)],
                [r.dryRun ? 'would release' : 'released', `${formatSize(r.releasedBytes)} of allocation, ${formatSize(r.droppedBytes)} of stored data`],
                ['journal', r.journal.clean ? 'clean' : `${r.journal.pendingTransactions} transactions pending; their ${r.journal.blocksHeldByLog} blocks kept`],
              ]),
            )
          },
        )
        .command(
          'map-of <name> <offset>',
          'where one byte of a volume lives',
          (y) => y.positional('name', { type: 'string', demandOption: true }).positional('offset', { type: 'string', demandOption: true, describe: 'bytes, or 1G, 512M…' }),
          async (argv) => {
            const m = await call(argv, 'volume.mapOf', { name: argv.name, offset: argv.offset })
            print(argv, m, () =>
              fields([
                ['offset', `${m.offset} (extent ${m.extent}, which starts at ${m.extentOffset})`],
                ['state', m.state === 'unallocated' ? 'unallocated (reads as zeros, takes no space)' : m.state],
                ['storage', m.storage ?? '-'],
                ['slot', m.slot ?? '-'],
                ['chunk address', m.chunkAddress ?? '-'],
                ['data stored', m.stored ? 'yes' : 'no (zeros)'],
                ['migrating', m.migrating ? 'yes' : 'no'],
              ]),
            )
          },
        )
        .command(
          'map <name>',
          'show a volume in a host\'s mount',
          (y) => y.positional('name', { type: 'string', demandOption: true }).option('host', { type: 'string', demandOption: true }),
          async (argv) => {
            const v = await call(argv, 'volume.map', { name: argv.name, host: argv.host })
            print(argv, v, () => `volume ${v.name} mapped to ${argv.host}`)
          },
        )
        .command(
          'unmap <name>',
          'hide a volume from a host\'s mount',
          (y) => y.positional('name', { type: 'string', demandOption: true }).option('host', { type: 'string', demandOption: true }),
          async (argv) => {
            const v = await call(argv, 'volume.unmap', { name: argv.name, host: argv.host })
            print(argv, v, () => `volume ${v.name} unmapped from ${argv.host}`)
          },
        )
        .demandCommand(1),
    )
    .command('pool', 'the pool of storage systems', (y) =>
      y
        .command('status', 'free-space table, over-commitment and pressure settings', (y) => watchOptions(y), async (argv) => {
          if (argv.watch) {
            await withClient(argv, (c) => watch({ title: 'vvfs pool status', fetch: () => c.call('pool.status', {}), human: poolText, json: argv.json, interval: argv.interval }))
            return
          }
          const p = await call(argv, 'pool.status', {})
          print(argv, p, () => poolText(p))
        })
        .command(
          'set',
          'set the warning threshold and what a full pool does',
          (y) =>
            y
              .option('warn', { type: 'number', describe: 'warning threshold in percent of capacity' })
              .option('full-mode', { choices: ['error', 'queue'] as const, describe: 'error: ENOSPC at once; queue: hold writers until space or timeout' })
              .option('queue-timeout', { type: 'string', describe: 'how long queued writers wait, e.g. 60s' }),
          async (argv) => {
            const p = await call(argv, 'pool.set', {
              warnPercent: argv.warn,
              fullMode: argv['full-mode'],
              queueTimeoutMs: argv['queue-timeout'] === undefined ? undefined : parseDuration(argv['queue-timeout'], 'queue timeout'),
            })
            print(argv, p, () => poolText(p))
          },
        )
        .demandCommand(1),
    )
    .command(
      'events',
      'print events as they happen (one JSON object per line)',
      (y) => y.option('type', { type: 'string', array: true, describe: 'event types (default: all)' }),
      async (argv) => {
        const client = await ControlClient.connect(argv.socket)
        client.onEvent((e) => process.stdout.write(JSON.stringify(e) + '\n'))
        await client.call('events.subscribe', { types: argv.type as never })
        await new Promise(() => {})
      },
    )
    .command('protocol', 'print the control protocol (methods, params, errors)', (y) => y, (argv) => {
      const methods = Object.entries(METHODS).map(([name, m]) => ({ method: name, summary: m.summary, errors: m.errors }))
      print(argv, methods, () => table(['METHOD', 'SUMMARY', 'ERRORS'], methods.map((m) => [m.method, m.summary, m.errors.join(' ') || '-'])))
    })
    // Commands and options complete here; names from the daemon in main(), before yargs (lib/cli/completion.ts).
    .completion('completion', 'print a bash or zsh completion script (vvfs completion >> ~/.bashrc)')
    .demandCommand(1, 'name a command (vvfs --help lists them)')
    .strict()
    .recommendCommands()
    .wrap(Math.min(120, process.stdout.columns || 100))
    .fail((msg, err, y) => {
      if (err) throw err
      const hint = /^Not enough non-option/.test(msg ?? '') && rawArgs.some((a) => a.startsWith('-')) ? ` (a name starting with '-' goes after '--': vvfs volume delete -- -rf)` : ''
      process.stderr.write(`${y.help()}\n\nvvfs: ${msg}${hint}\n`)
      process.exit(2)
    })
  migrationCommands(cli, withClient, print)
  faultCommands(cli, withClient, print)
  replicationCommands(cli, withClient, print)
  relayCommands(cli, withClient, print) // issue 15
  return cli
}

/** Issue 15: --etcd URL[,URL] --relay-id NAME [--standby] [--lease-ttl D], or undefined without --etcd. */
function clusterOptions(argv: { etcd?: string; 'relay-id'?: string; standby: boolean; 'lease-ttl': string }): ClusterOptions | undefined {
  if (argv.etcd === undefined) {
    if (argv['relay-id'] !== undefined || argv.standby) throw new VvfsError('INVALID_ARGUMENT', '--relay-id and --standby need --etcd URL')
    return undefined
  }
  const endpoints = argv.etcd.split(',').map((u) => u.trim()).filter((u) => u !== '')
  if (endpoints.length === 0) throw new VvfsError('INVALID_ARGUMENT', '--etcd needs at least one client URL')
  const relayId = argv['relay-id']
  if (relayId === undefined) throw new VvfsError('INVALID_ARGUMENT', '--etcd needs --relay-id NAME (this relay\'s name in the cluster)')
  checkName(relayId, 'relay')
  const leaseTtlMs = parseDuration(argv['lease-ttl'], '--lease-ttl')
  if (leaseTtlMs < 2000) throw new VvfsError('INVALID_ARGUMENT', '--lease-ttl must be at least 2s (etcd grants leases in whole seconds)')
  return { endpoints, relayId, standby: argv.standby, leaseTtlMs }
}

const COMMANDS = new Set(['daemon', 'status', 'storage', 'host', 'volume', 'pool', 'events', 'protocol', 'migrate', 'job', 'fault', 'completion', 'replicate', 'relay'])

export async function main(args = hideBin(process.argv)): Promise<void> {
  const json = args.includes('--json')
  if (args[0] === COMPLETION_KEY) {
    const names = await namesToComplete(args.slice(1), DEFAULT_SOCKET)
    if (names) {
      process.stdout.write(names.map((n) => n + '\n').join(''))
      return
    }
  }
  // yargs answers `vvfs typo --help` with the top-level help and status 0; a script should see the typo.
  if (args[0] && !args[0].startsWith('-') && !COMMANDS.has(args[0])) {
    process.stderr.write(`vvfs: unknown command ${JSON.stringify(args[0])} (vvfs --help lists them)\n`)
    process.exitCode = 2
    return
  }
  try {
    await buildCli(args).parseAsync()
  } catch (err) {
    const e = asVvfsError(err)
    if (json) process.stdout.write(JSON.stringify({ error: e.toWire() }, null, 2) + '\n')
    process.stderr.write(`vvfs: ${e.code}: ${e.message}\n`)
    process.exitCode = 1
  }
}
