/**
 * The control protocol, specified once: every method's params and result,
 * the error codes it may return, and the events. The server validates params
 * with it, the client and the CLI are typed by it, and README's protocol
 * section is generated from it (`vvfs protocol`).
 *
 * Transport: JSON-RPC 2.0 over a Unix socket, one JSON object per line.
 * Errors: `{code: <JSON-RPC number>, message, data: {code: <stable string>}}`.
 * Events: notifications `{"method":"event","params":{type, time, …}}` sent to
 * clients that called `events.subscribe`.
 */
import { z } from 'zod'
import type { ErrorCode } from '../errors.js'
import { COPY_MODES, JOB_KINDS, JOB_RESULTS, JOB_STATUSES } from '../migration/job.js'
import { FAULT_EFFECTS, FAULT_OPS } from '../storage/fault-injector.js'
import { MAX_SIZE, checkExistingName, checkName, parseDuration, parseOffset, parseSize } from '../units.js'

// ---- shared pieces

/** A param read by one of the units parsers, its error becoming a coded issue. */
function parsed<T>(base: z.ZodType<string | number>, parse: (v: unknown) => T, vvfsCode: ErrorCode) {
  return base.transform((v, ctx) => {
    try {
      return parse(v)
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message, params: { vvfsCode } })
      return z.NEVER
    }
  })
}

const NumberOrString = z.union([z.number(), z.string()])

/** A size: integer bytes, or a string like "512M", "4G", "1T". */
export const Size = parsed(NumberOrString, (v) => parseSize(v), 'INVALID_SIZE')
/** An offset into a volume: a size, or 0. */
export const Offset = parsed(NumberOrString, (v) => parseOffset(v), 'INVALID_SIZE')
/** The name of something to be created: never starting with a dot or a dash. */
export const NewName = parsed(z.string(), (v) => checkName(v), 'INVALID_NAME')
/** The name of something that exists (one starting with a dash, from an older state, included). */
export const Name = parsed(z.string(), (v) => checkExistingName(v), 'INVALID_NAME')

const Path = z.string().min(1).max(4096)
const Bytes = z.number().int().min(0).max(MAX_SIZE)

export const StorageInfo = z.object({
  name: z.string(),
  id: z.number(),
  path: z.string(),
  /** Issue 14: 'local', or the storage server's ADDR:PORT. */
  location: z.string(),
  /** Issue 14: 'local', or the link to the storage server: connecting, ready, down, closed. */
  connection: z.enum(['local', 'connecting', 'ready', 'down', 'closed']),
  /** Issue 14: smoothed round trip to the storage server in ms (null: local, or no answer yet). */
  rttMs: z.number().nullable(),
  /** Issue 14: the fencing token this daemon's mutations carry (null: local). */
  epoch: z.number().nullable(),
  /** normal; reserve (for staged transfers); draining (takes no new allocations). */
  role: z.enum(['normal', 'reserve', 'draining']),
  capacity: Bytes,
  allocated: Bytes,
  free: Bytes,
  usedPercent: z.number(),
  largestFreeRun: Bytes,
  wholeExtents: z.number(),
  fragments: z.number(),
  volumes: z.array(z.string()),
  /** Issue 17: bytes the store's directory takes on disk (allocated blocks, as du); null: not local. Only in `storage.list`. */
  diskBytes: Bytes.nullable().optional(),
})

export const HostInfo = z.object({
  name: z.string(),
  mount: z.string(),
  mounted: z.boolean(),
  volumes: z.array(z.string()),
})

export const VolumeInfo = z.object({
  name: z.string(),
  id: z.string(),
  size: Bytes,
  allocated: Bytes,
  hosts: z.array(z.string()),
  state: z.string(),
  createdAt: z.string(),
  files: z.array(z.string()),
})

/** Consecutive allocated extents on one storage system, of one kind (lib/manager/extent-runs.ts). */
export const ExtentRun = z.object({
  offset: Bytes,
  length: Bytes,
  extents: z.number(),
  /** The storage system; for fragments, the systems holding them, joined by ','. */
  storage: z.string(),
  /** whole: each extent is one slot; fragments: single-chunk fragments. */
  kind: z.enum(['whole', 'fragments']),
})

/** One allocated extent. */
export const ExtentPlacement = z.object({
  extent: z.number(),
  offset: Bytes,
  kind: z.enum(['whole', 'fragments']),
  storage: z.string(),
  /** whole: the slot in its storage system. */
  slot: z.number().optional(),
  /** fragments: how many chunks have one. */
  fragments: z.number().optional(),
})

export const VolumeDetail = VolumeInfo.extend({
  allocatedBySystem: z.array(z.object({ storage: z.string(), allocated: Bytes })),
  extents: z.number(),
  /** The map as runs, in offset order. */
  map: z.array(ExtentRun),
  /** Per allocated extent, when asked for with `extents: true`. */
  extentMap: z.array(ExtentPlacement).optional(),
  open: z.record(z.string(), z.object({ readers: z.number(), writers: z.number() })),
})

export const PoolSystemStatus = z.object({
  name: z.string(),
  capacity: Bytes,
  allocated: Bytes,
  free: Bytes,
  usedPercent: z.number(),
  largestFreeRun: Bytes,
  overcommit: z.number(),
})

export const PoolStatus = z.object({
  capacity: Bytes,
  allocated: Bytes,
  free: Bytes,
  usedPercent: z.number(),
  largestFreeRun: Bytes,
  /** Sum of volume sizes / capacity. */
  overcommit: z.number(),
  volumeBytes: Bytes,
  warnPercent: z.number(),
  fullMode: z.enum(['error', 'queue']),
  queueTimeoutMs: z.number(),
  queuedWriters: z.number(),
  /** Allocated to migration jobs' retained sources (not free, referenced by no volume). */
  heldByJobs: Bytes,
  systems: z.array(PoolSystemStatus),
})

export const JobStatus = z.enum(JOB_STATUSES)

/** How a job copies: direct, staged (via a reserve system), free (via unused space), memory. */
export const CopyMode = z.enum(COPY_MODES)

export const JobProgress = z.object({ current: Bytes, total: Bytes, percent: z.number(), bytesPerSecond: z.number(), etaSeconds: z.number().nullable() })

/** A job of any kind (lib/migration/job.ts has the model and the records). */
export const JobInfo = z.object({
  id: z.number(),
  kind: z.enum(JOB_KINDS),
  status: JobStatus,
  result: z.enum(JOB_RESULTS).optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  volumes: z.array(z.string()),
  to: z.string().optional(),
  from: z.string().optional(),
  mode: CopyMode,
  rate: z.number(),
  keepMs: z.number(),
  retainUntil: z.string().optional(),
  progress: JobProgress,
  createdAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  reason: z.string().optional(),
  auto: z.boolean(),
})

/**
 * Issue 13: one side of a replication pair. Sequence numbers: written (the
 * last the primary's journal gave out), durable (its entries up to it are
 * synced in the journal), shipped (sent to the secondary), applied (the
 * secondary applied everything through it, durably). Lag: entries written
 * and not applied; their bytes in the journal; seconds since the oldest of
 * them was written — all 0 on an idle pair, never negative.
 */
export const ReplicationInfo = z.object({
  pair: z.string(),
  role: z.enum(['primary', 'secondary']),
  /** The primary's replication job (null on the secondary). */
  job: z.number().nullable(),
  volume: z.string(),
  /** Issue 13.6: the consistency group (its volumes share one sequence and are one point in time at the secondary); null for one volume. */
  group: z.string().nullable(),
  peer: z.string(),
  /** primary: syncing, replicating, behind, resyncing, paused, stopped; secondary: consistent, catching-up, resyncing. */
  state: z.string(),
  link: z.enum(['up', 'down']),
  epoch: z.number(),
  lastWritten: z.number(),
  lastDurable: z.number(),
  lastShipped: z.number(),
  lastApplied: z.number(),
  /** The secondary's image is the primary's writes 1..lastApplied (false during a sync or resync). */
  consistent: z.boolean(),
  lag: z.object({ entries: z.number().min(0), bytes: z.number().min(0), seconds: z.number().min(0) }),
  journal: z.object({ mode: z.string(), usedBytes: Bytes, limitBytes: Bytes, entries: z.number(), dirtyExtents: z.number() }),
  /** Bytes per second shipped (journal entries), over the last 5 s. */
  rate: z.number(),
  /** The initial sync's or current resync's bytes copied / to copy. */
  sync: z.object({ copied: Bytes, total: Bytes }),
  lastError: z.object({ code: z.string(), message: z.string() }).passthrough().nullable(),
  /** Issue 13.4, primary only: the journal's home (the storage system of the current epoch) and the epochs whose journals are kept (more than one: an earlier home's entries still to ship). */
  home: z.object({ name: z.string(), keptEpochs: z.array(z.number()) }).optional(),
  /** Issue 13.7: primary — bytes sent since the pair opened here: journal records shipped plus extent data copied. */
  bytesShipped: z.number().min(0).optional(),
  /** Issue 13.7: failover — this side's and the peer's last reported history, compared by the epoch chain. */
  failover: z.lazy(() => FailoverView).optional(),
  /** Issue 13.6/13.7: on a promoted side, the number applied at the promote — every volume of the pair (a group's all together) is the old primary's writes 1..promotedAt plus what was written here since. */
  promotedAt: z.number().min(0).optional(),
})

/**
 * Issue 13.7: a pair's failover view. role: primary, secondary, promoted
 * (writable since a promote, no pair yet), demoted (read-only, its pair
 * ended). relation (this side vs the peer's last report, by the epoch
 * chain): same, local-behind, peer-behind, split-brain (both written past
 * commonSeq — never resolved automatically), unknown (no report).
 */
export const FailoverView = z.object({
  role: z.enum(['primary', 'secondary', 'promoted', 'demoted']),
  lastSeq: z.number(),
  peer: z.object({ role: z.enum(['primary', 'secondary', 'promoted', 'demoted']), epoch: z.number(), lastSeq: z.number(), seenSecondsAgo: z.number(), listen: z.string().nullable() }).nullable(),
  relation: z.enum(['same', 'local-behind', 'peer-behind', 'split-brain', 'unknown']),
  commonSeq: z.number().nullable(),
})

export const FaultInfo = z.object({
  id: z.number(),
  storage: z.string(),
  op: z.enum(FAULT_OPS),
  error: z.enum(FAULT_EFFECTS),
  delayMs: z.number(),
  probability: z.number(),
  after: z.number(),
  count: z.number().nullable(),
  seed: z.number(),
  seen: z.number().describe('matching operations so far (the first `after` pass)'),
  injected: z.number(),
  active: z.boolean().describe('false once `count` injections are spent'),
  createdAt: z.string(),
})

export const Policy = z.object({ enabled: z.boolean(), fragmentation: z.number(), minRun: Bytes, intervalMs: z.number() })

const Duration = parsed(NumberOrString, (v) => parseDuration(v), 'INVALID_ARGUMENT')
const JobId = z.strictObject({ id: z.number().int().min(1) })

/** Every event: its type and what it carries besides `type` and `time`. */
export const EVENTS = {
  'volume.created': z.object({ volume: VolumeInfo }),
  'volume.deleted': z.object({ name: z.string(), id: z.string(), released: Bytes }),
  'volume.resized': z.object({ name: z.string(), from: Bytes, to: Bytes }),
  'volume.reclaimed': z.object({ name: z.string(), releasedBytes: Bytes }),
  'volume.mapped': z.object({ name: z.string(), host: z.string() }),
  'volume.unmapped': z.object({ name: z.string(), host: z.string() }),
  'storage.added': z.object({ storage: StorageInfo }),
  'storage.removed': z.object({ name: z.string() }),
  'host.added': z.object({ host: HostInfo }),
  'host.removed': z.object({ name: z.string() }),
  /** A host's mount was detached by someone else (`umount`). */
  'host.unmounted': z.object({ name: z.string(), mount: z.string(), external: z.boolean() }),
  /** A host was mounted again (`host.remount`). */
  'host.mounted': z.object({ host: HostInfo }),
  'pool.threshold': z.object({ usedPercent: z.number(), warnPercent: z.number(), allocated: Bytes, capacity: Bytes }),
  'pool.settings': z.object({ settings: z.object({ warnPercent: z.number(), fullMode: z.enum(['error', 'queue']), queueTimeoutMs: z.number() }) }),
  /** A job was created (from: null) or changed status. */
  'job.status': z.object({ job: JobInfo, from: JobStatus.nullable() }),
  /** A job's progress, at most every 500 ms and at its end. */
  'job.progress': JobProgress.extend({ job: z.number() }),
  /** Issue 17: a store was compacted (`storage compact`, or the idle policy), with its bytes on disk before and after. */
  'storage.compacted': z.object({ storage: z.string(), reason: z.enum(['command', 'idle']), beforeBytes: Bytes, afterBytes: Bytes, ms: z.number(), completed: z.boolean() }),
  /** Issue 17: a compaction finished one of its steps (of total: ranges of 64 MiB of chunk addresses). */
  'storage.compact_progress': z.object({ storage: z.string(), done: z.number(), total: z.number() }),
  /** Issue 13: a replication pair changed state (replicating, behind, resyncing, …). */
  'replication.state': z.object({ pair: z.string(), volume: z.string(), from: z.string(), to: z.string(), reason: z.string() }),
  /** Issue 13.7: promoted, demoted, reversed, resolved, split-brain (once per detection). */
  'replication.failover': z.object({ pair: z.string(), volume: z.string(), action: z.enum(['promoted', 'demoted', 'reversed', 'resolved', 'split-brain']), epoch: z.number(), reason: z.string() }),
  'fault.injected': z.object({ fault: z.number(), storage: z.string(), op: z.enum(FAULT_OPS), error: z.enum(FAULT_EFFECTS), delayMs: z.number().optional() }),
} as const

export type EventType = keyof typeof EVENTS
export const EventType = z.enum(Object.keys(EVENTS) as [EventType, ...EventType[]])

/** What an event of one type carries besides `type` and `time`. */
export type EventBody<T extends EventType> = z.infer<(typeof EVENTS)[T]>

/**
 * An event as sent to subscribers: `{type, time, …body}`, discriminated by
 * `type`. Fields a later daemon adds are `unknown` to a client built against
 * this schema (narrow by `type` to read the typed ones).
 */
export type VvfsEvent = { [T in EventType]: { type: T; time: string } & EventBody<T> & { [field: string]: unknown } }[EventType]

const Empty = z.strictObject({})
const ByName = z.strictObject({ name: Name })

// ---- methods

function method<P extends z.ZodType, R extends z.ZodType>(spec: { summary: string; params: P; result: R; errors: readonly ErrorCode[] }) {
  return spec
}

const NAME_ERRORS = ['INVALID_NAME'] as const

export const METHODS = {
  status: method({
    summary: 'Daemon status: version, uptime, pool totals, counts.',
    params: Empty,
    result: z.object({
      version: z.string(),
      pid: z.number(),
      stateDir: z.string(),
      socket: z.string(),
      startedAt: z.string(),
      uptimeSeconds: z.number(),
      pool: z.object({ capacity: Bytes, allocated: Bytes, free: Bytes }),
      storage: z.number(),
      hosts: z.number(),
      volumes: z.number(),
      readCache: z.object({
        served: z.number().describe('host reads answered from read-ahead data in the FUSE threads, since start'),
        published: z.number().describe('extents offered there now'),
      }),
      memory: z.object({
        rss: Bytes.describe("the daemon's resident memory now"),
        peakRss: Bytes.describe('its highest resident memory since start (VmHWM); 0 where the system does not say'),
        heapUsed: Bytes.describe("JavaScript objects alive in V8's heap"),
        heapTotal: Bytes.describe("V8's heap as allocated"),
        external: Bytes.describe('buffers outside the JavaScript heap that JavaScript holds'),
        budget: Bytes.describe("the local storage systems' budget for memtables and caches (daemon --memory)"),
        held: Bytes.describe("what their memtables and caches hold now (LevelDB's estimate)"),
        stores: z.number().describe('local storage systems sharing it'),
        writeBufferSize: Bytes.describe("each one's memtable size (up to two are held)"),
        cacheSize: Bytes.describe("each one's block cache"),
        overBudget: z.boolean().describe('the stores are too many for the budget at their floors'),
      }),
    }),
    errors: [],
  }),
  'storage.add': method({
    summary:
      'Adds a storage system: a new LevelDB store with a declared capacity of at most 16 TiB (reserve: only for staged transfers), or (remote: ADDR:PORT, peerKey: FILE) a storage server, claimed for this system; its capacity defaults to the server\'s.',
    params: z.strictObject({
      name: NewName,
      capacity: Size.optional(),
      path: Path.optional(),
      reserve: z.boolean().optional(),
      remote: z.string().min(1).max(300).optional(),
      peerKey: Path.optional(),
    }),
    result: StorageInfo,
    errors: [...NAME_ERRORS, 'INVALID_SIZE', 'CAPACITY_TOO_LARGE', 'STORAGE_EXISTS', 'STORAGE_PATH_IN_USE', 'IO_ERROR', 'INVALID_ARGUMENT', 'STATE_CORRUPT', 'PEER_AUTH_FAILED', 'PEER_UNAVAILABLE', 'PEER_PROTOCOL'],
  }),
  // issue 14
  'storage.fence': method({
    summary: 'Raises a storage server\'s fencing token to epoch (persisted there before it answers): mutations with a lower token are refused from then on; this daemon\'s carry epoch.',
    params: z.strictObject({ name: Name, epoch: z.number().int().min(0).max(2 ** 48 - 1) }),
    result: StorageInfo.extend({ fence: z.number() }),
    errors: [...NAME_ERRORS, 'STORAGE_NOT_FOUND', 'NOT_SUPPORTED', 'FENCED', 'IO_ERROR'],
  }),
  // issue 17
  'storage.compact': method({
    summary:
      'Compacts a local storage system\'s store, giving back the space of overwritten and deleted chunks; in the background unless wait (then the result has its bytes on disk before and after).',
    params: z.strictObject({ name: Name, wait: z.boolean().optional() }),
    result: z.object({ storage: z.string(), started: z.boolean(), beforeBytes: Bytes.optional(), afterBytes: Bytes.optional(), ms: z.number().optional(), completed: z.boolean().optional() }),
    errors: [...NAME_ERRORS, 'STORAGE_NOT_FOUND', 'NOT_SUPPORTED', 'IO_ERROR', 'SHUTTING_DOWN'],
  }),
  'storage.list': method({ summary: 'Lists storage systems with their free-space table.', params: Empty, result: z.object({ storage: z.array(StorageInfo) }), errors: [] }),
  'storage.remove': method({
    summary: 'Removes a storage system that holds no extents.',
    params: ByName,
    result: z.object({ removed: z.string() }),
    errors: [...NAME_ERRORS, 'STORAGE_NOT_FOUND', 'STORAGE_IN_USE'],
  }),
  'host.add': method({
    summary: 'Adds a host: a FUSE mount that shows the volumes mapped to it.',
    params: z.strictObject({ name: NewName, mount: Path }),
    result: HostInfo,
    errors: [...NAME_ERRORS, 'HOST_EXISTS', 'INVALID_ARGUMENT', 'MOUNT_FAILED'],
  }),
  'host.list': method({ summary: 'Lists hosts.', params: Empty, result: z.object({ hosts: z.array(HostInfo) }), errors: [] }),
  'host.remove': method({
    summary: 'Removes a host (unmounts it, unmaps its volumes); refused while a volume file is open on it.',
    params: ByName,
    result: z.object({ removed: z.string() }),
    errors: [...NAME_ERRORS, 'HOST_NOT_FOUND', 'HOST_BUSY'],
  }),
  'host.remount': method({
    summary: 'Mounts a host again after someone else unmounted it (nothing to do if it is mounted).',
    params: ByName,
    result: HostInfo,
    errors: [...NAME_ERRORS, 'HOST_NOT_FOUND', 'HOST_BUSY', 'MOUNT_FAILED'],
  }),
  'volume.create': method({
    summary: 'Creates a thin volume (no space is taken until written) and maps it to hosts (default: local).',
    params: z.strictObject({ name: NewName, size: Size, hosts: z.array(Name).max(64).optional() }),
    result: VolumeInfo,
    errors: [...NAME_ERRORS, 'INVALID_SIZE', 'VOLUME_EXISTS', 'HOST_NOT_FOUND'],
  }),
  'volume.list': method({ summary: 'Lists volumes.', params: Empty, result: z.object({ volumes: z.array(VolumeInfo) }), errors: [] }),
  'volume.show': method({
    summary: 'One volume: allocation per storage system and its extent map as runs (with extents: true, per extent too).',
    params: z.strictObject({ name: Name, extents: z.boolean().optional() }),
    result: VolumeDetail,
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND'],
  }),
  'volume.resize': method({
    summary: 'Grows or shrinks a volume; shrinking releases what lies past the new end.',
    params: z.strictObject({ name: Name, size: Size }),
    result: VolumeInfo,
    errors: [...NAME_ERRORS, 'INVALID_SIZE', 'VOLUME_NOT_FOUND'],
  }),
  'volume.delete': method({
    summary: 'Deletes a volume and releases its space; refused while its file is open.',
    params: ByName,
    result: z.object({ deleted: z.string(), released: Bytes }),
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'VOLUME_BUSY'],
  }),
  'volume.map': method({
    summary: 'Shows a volume in a host\'s mount.',
    params: z.strictObject({ name: Name, host: Name }),
    result: VolumeInfo,
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'HOST_NOT_FOUND', 'ALREADY_MAPPED'],
  }),
  'volume.unmap': method({
    summary: 'Hides a volume from a host\'s mount; refused while its file is open there.',
    params: z.strictObject({ name: Name, host: Name }),
    result: VolumeInfo,
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'HOST_NOT_FOUND', 'NOT_MAPPED', 'VOLUME_BUSY'],
  }),
  'volume.mapOf': method({
    summary: 'Where one byte of a volume lives: storage system, extent, chunk address and state.',
    params: z.strictObject({ name: Name, offset: Offset }),
    result: z.object({
      volume: z.string(),
      offset: Bytes,
      extent: z.number(),
      extentOffset: Bytes,
      state: z.enum(['unallocated', 'whole', 'fragment']),
      storage: z.string().optional(),
      slot: z.number().optional(),
      chunkAddress: z.number().optional(),
      stored: z.boolean(),
      migrating: z.boolean(),
    }),
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'OUT_OF_RANGE', 'INVALID_SIZE'],
  }),
  'volume.reclaim': method({
    summary: 'Reads the ext4 file system on a volume (bitmaps and journal) and releases every chunk it marks free.',
    params: z.strictObject({ name: Name, dryRun: z.boolean().optional(), force: z.boolean().optional() }),
    result: z.object({
      volume: z.string(),
      filesystem: z.literal('ext4'),
      uuid: z.string(),
      label: z.string(),
      blockSize: z.number(),
      fsFreeBytes: Bytes,
      releasedBytes: Bytes,
      droppedBytes: Bytes,
      dryRun: z.boolean(),
      journal: z.object({ present: z.boolean(), clean: z.boolean(), pendingTransactions: z.number(), blocksHeldByLog: z.number() }),
    }),
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'VOLUME_BUSY', 'FS_UNKNOWN', 'FS_CORRUPT', 'NOT_SUPPORTED'],
  }),
  'pool.status': method({
    summary: 'The free-space table per storage system and in total, over-commitment and pressure settings.',
    params: Empty,
    result: PoolStatus,
    errors: [],
  }),
  'pool.set': method({
    summary: 'Sets the warning threshold and what a full pool does to writers (error | queue).',
    params: z.strictObject({
      warnPercent: z.number().min(1).max(100).optional(),
      fullMode: z.enum(['error', 'queue']).optional(),
      queueTimeoutMs: z.number().int().min(0).max(86_400_000).optional(),
    }),
    result: PoolStatus,
    errors: ['INVALID_ARGUMENT'],
  }),
  'storage.drain': method({
    summary: 'Evacuates every extent of every volume from a storage system (a job), so it can be removed.',
    params: z.strictObject({ name: Name, mode: CopyMode.optional(), keep: Duration.optional(), rate: Size.optional() }),
    result: JobInfo,
    errors: [...NAME_ERRORS, 'STORAGE_NOT_FOUND', 'POOL_FULL', 'JOB_STATE', 'INVALID_ARGUMENT'],
  }),
  'storage.undrain': method({
    summary: 'Lets a drained storage system take new allocations again.',
    params: ByName,
    result: StorageInfo,
    errors: [...NAME_ERRORS, 'STORAGE_NOT_FOUND', 'JOB_STATE'],
  }),
  'migrate.start': method({
    summary: 'Moves a volume\'s extents onto one storage system while hosts keep using it (a job).',
    params: z.strictObject({ volume: Name, to: Name, mode: CopyMode.optional(), keep: Duration.optional(), rate: Size.optional() }),
    result: JobInfo,
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'STORAGE_NOT_FOUND', 'POOL_FULL', 'JOB_STATE', 'INVALID_ARGUMENT'],
  }),
  'migrate.plan': method({
    summary: 'What the consolidation policy would do now, and why (changes nothing).',
    params: Empty,
    result: z.object({
      policy: Policy,
      moves: z.array(z.object({ volume: z.string(), to: z.string(), trigger: z.enum(['spanned', 'fragmented']), reason: z.string() })),
      findings: z.array(z.string()),
    }),
    errors: [],
  }),
  'migrate.policy': method({
    summary: 'Shows or sets the consolidation policy (on/off, fragmentation threshold, short-run size, interval).',
    params: z.strictObject({ enabled: z.boolean().optional(), fragmentation: z.number().min(0).max(1).optional(), minRun: Size.optional(), interval: Duration.optional() }),
    result: Policy,
    errors: ['INVALID_ARGUMENT'],
  }),
  'migrate.rollback': method({
    summary: 'Returns a volume to its source within the retention window, copying back what was written since the switch.',
    params: JobId,
    result: JobInfo,
    errors: ['JOB_NOT_FOUND', 'JOB_STATE'],
  }),
  'job.list': method({ summary: 'Lists jobs (the last 100 concluded ones too).', params: Empty, result: z.object({ jobs: z.array(JobInfo) }), errors: [] }),
  'job.show': method({ summary: 'One job: status, progress, rate, ETA.', params: JobId, result: JobInfo, errors: ['JOB_NOT_FOUND'] }),
  'job.pause': method({ summary: 'Pauses a running job after the extent it is copying.', params: JobId, result: JobInfo, errors: ['JOB_NOT_FOUND', 'JOB_STATE'] }),
  'job.resume': method({ summary: 'Resumes a paused job.', params: JobId, result: JobInfo, errors: ['JOB_NOT_FOUND', 'JOB_STATE'] }),
  'job.cancel': method({
    summary: 'Cancels a running or paused job: the volume is returned whole to its source.',
    params: JobId,
    result: JobInfo,
    errors: ['JOB_NOT_FOUND', 'JOB_STATE'],
  }),
  // issue 13: replication
  'replicate.start': method({
    summary: 'Replicates a volume to another vvfs daemon (its --listen ADDR:PORT): creates the read-only secondary there, syncs the allocated extents, then ships the journal (a job).',
    params: z.strictObject({
      volume: Name,
      /** Issue 13.6: more volumes sharing the pair's one sequence (a consistency group; needs group). */
      also: z.array(Name).max(63).optional(),
      /** The consistency group's name (the pair's name unless `as`). */
      group: NewName.optional(),
      to: z.string().min(1).max(300),
      as: NewName.optional(),
      peerKey: Path.optional(),
      rate: Size.optional(),
      journalLimit: Size.optional(),
      journalPolicy: z.enum(['bitmap', 'throttle']).optional(),
    }),
    result: ReplicationInfo,
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'JOB_STATE', 'INVALID_ARGUMENT', 'PEER_AUTH_FAILED', 'NOT_SUPPORTED'],
  }),
  'replicate.stop': method({ summary: 'Stops a pair on the primary: the journal is dropped; the secondary keeps its volume.', params: z.strictObject({ pair: Name }), result: ReplicationInfo, errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'JOB_STATE'] }),
  'replicate.pause': method({ summary: 'Pauses shipping (the journal keeps recording, up to its limit).', params: z.strictObject({ pair: Name }), result: ReplicationInfo, errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'JOB_STATE'] }),
  'replicate.resume': method({ summary: 'Resumes shipping.', params: z.strictObject({ pair: Name }), result: ReplicationInfo, errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'JOB_STATE'] }),
  'replicate.status': method({
    summary: 'One pair (or all): state, epoch, sequence numbers written/durable/shipped/applied, lag, journal use, rate.',
    params: z.strictObject({ pair: Name.optional() }),
    result: z.object({ pairs: z.array(ReplicationInfo) }),
    errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND'],
  }),
  'replicate.list': method({ summary: 'Every replication pair of this daemon, primary and secondary sides.', params: Empty, result: z.object({ pairs: z.array(ReplicationInfo) }), errors: [] }),
  // issue 13.7: failover and failback
  'replicate.promote': method({
    summary: 'On the secondary: makes the pair\'s volume (a consistency group\'s volumes together, at one applied number) writable, starting a new epoch. Refused while the secondary is inconsistent or its primary reachable and the pair healthy, unless force.',
    params: z.strictObject({ pair: Name, force: z.boolean().optional() }),
    result: ReplicationInfo,
    errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'PROMOTE_REFUSED', 'FAILOVER_STATE', 'NOT_SUPPORTED'],
  }),
  'replicate.demote': method({
    summary: 'On the primary: makes the volume (a consistency group\'s volumes together) read-only, lets the secondary apply what it can (bounded), records what it lacks, and ends the pair here.',
    params: z.strictObject({ pair: Name }),
    result: ReplicationInfo,
    errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'FAILOVER_STATE', 'VOLUME_BUSY'],
  }),
  'replicate.reverse': method({
    summary: 'On the promoted side: the old (demoted) primary becomes the replica; ships what was written since the promote and copies only extents the old side changed past it.',
    params: z.strictObject({ pair: Name, to: z.string().min(1).max(300).optional(), peerKey: Path.optional() }),
    result: ReplicationInfo,
    errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'FAILOVER_STATE', 'SPLIT_BRAIN', 'VOLUME_BUSY', 'INVALID_ARGUMENT', 'PEER_UNAVAILABLE', 'PEER_AUTH_FAILED'],
  }),
  'replicate.resolve': method({
    summary: 'On the promoted side, after a split-brain: discards the changes of one side (local: this side becomes the replica again; peer: the peer does) and resyncs the pair. Not for a consistency group yet (NOT_SUPPORTED).',
    params: z.strictObject({ pair: Name, discard: z.enum(['local', 'peer']), to: z.string().min(1).max(300).optional(), peerKey: Path.optional() }),
    result: ReplicationInfo,
    errors: [...NAME_ERRORS, 'PAIR_NOT_FOUND', 'FAILOVER_STATE', 'VOLUME_BUSY', 'INVALID_ARGUMENT', 'PEER_UNAVAILABLE', 'PEER_AUTH_FAILED', 'NOT_SUPPORTED'],
  }),
  'fault.add': method({
    summary: 'Injects I/O errors (EIO, ENOSPC) or delays into a storage system\'s reads, writes or syncs (daemon started with --allow-faults).',
    params: z.strictObject({
      storage: Name,
      op: z.enum(FAULT_OPS),
      error: z.enum(FAULT_EFFECTS),
      delay: Duration.optional(),
      probability: z.number().min(0).max(1).optional(),
      after: z.number().int().min(0).optional(),
      count: z.number().int().min(1).optional(),
      seed: z.number().int().min(0).max(0xffffffff).optional(),
    }),
    result: FaultInfo,
    errors: [...NAME_ERRORS, 'FAULTS_DISABLED', 'STORAGE_NOT_FOUND', 'INVALID_ARGUMENT'],
  }),
  'fault.list': method({ summary: 'Lists injected-fault rules and how often each has fired.', params: Empty, result: z.object({ faults: z.array(FaultInfo) }), errors: ['FAULTS_DISABLED'] }),
  'fault.clear': method({
    summary: 'Removes one fault rule, or all of them.',
    params: z.strictObject({ id: z.number().int().min(1).optional() }),
    result: z.object({ cleared: z.array(z.number()) }),
    errors: ['FAULTS_DISABLED', 'FAULT_NOT_FOUND'],
  }),
  // issue 15: relays in a cluster
  'relay.list': method({
    summary: 'The cluster\'s relays (this daemon started with --etcd): each one\'s lease and its remaining TTL, and the volumes it owns with their fencing tokens.',
    params: Empty,
    result: z.object({
      relays: z.array(
        z.object({
          relay: z.string(),
          pid: z.number(),
          host: z.string(),
          startedAt: z.string(),
          lease: z.string(),
          leaseTtlMs: z.number(),
          volumes: z.array(z.object({ name: z.string(), token: z.number() })),
          self: z.boolean(),
        }),
      ),
    }),
    errors: ['NOT_SUPPORTED', 'PEER_UNAVAILABLE'],
  }),
  // issue 15
  'volume.move': method({
    summary: 'Hands a volume this relay owns over to another relay of the cluster: this relay stops serving it (host I/O answers EIO), drains it, syncs its map log and releases it; the named relay takes it over; returns once it serves it.',
    params: z.strictObject({ name: Name, relay: z.string().min(1) }),
    result: z.object({ volume: z.string(), from: z.string(), to: z.string(), token: z.number(), gapMs: z.number() }),
    errors: [...NAME_ERRORS, 'VOLUME_NOT_FOUND', 'NOT_SUPPORTED', 'NOT_OWNER', 'RELAY_NOT_FOUND', 'TIMEOUT', 'PEER_UNAVAILABLE', 'VOLUME_BUSY'],
  }),
  'events.subscribe': method({
    summary: 'Sends events to this connection as `event` notifications (all types if none given).',
    params: z.strictObject({ types: z.array(EventType).optional() }),
    result: z.object({ subscribed: z.array(EventType) }),
    errors: [],
  }),
} as const

export type Methods = typeof METHODS
export type MethodName = keyof Methods
export type Params<M extends MethodName> = z.output<Methods[M]['params']>
export type ParamsInput<M extends MethodName> = z.input<Methods[M]['params']>
export type Result<M extends MethodName> = z.infer<Methods[M]['result']>

export type Handlers = { [M in MethodName]: (params: Params<M>, ctx: CallContext) => Promise<Result<M>> }

export interface CallContext {
  subscribe(types: EventType[]): void
}

export function isMethodName(name: string): name is MethodName {
  return Object.prototype.hasOwnProperty.call(METHODS, name)
}

/** JSON-RPC numeric code for a stable error code. */
export function rpcCode(code: ErrorCode): number {
  switch (code) {
    case 'PARSE_ERROR':
      return -32700
    case 'INVALID_REQUEST':
    case 'LINE_TOO_LONG':
      return -32600
    case 'METHOD_NOT_FOUND':
      return -32601
    case 'INVALID_ARGUMENT':
    case 'INVALID_NAME':
    case 'INVALID_SIZE':
      return -32602
    case 'INTERNAL':
      return -32603
    default:
      return -32000
  }
}

export type StorageInfo = z.infer<typeof StorageInfo>
export type HostInfo = z.infer<typeof HostInfo>
export type VolumeInfo = z.infer<typeof VolumeInfo>
export type VolumeDetail = z.infer<typeof VolumeDetail>
export type ExtentRun = z.infer<typeof ExtentRun>
export type ExtentPlacement = z.infer<typeof ExtentPlacement>
export type PoolStatus = z.infer<typeof PoolStatus>
export type JobInfo = z.infer<typeof JobInfo>
export type FaultInfo = z.infer<typeof FaultInfo>
export type ReplicationInfo = z.infer<typeof ReplicationInfo>
export type FailoverView = z.infer<typeof FailoverView>
