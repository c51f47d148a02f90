/**
 * The replication job (issue 13): one job per pair, on the primary. Its
 * driver owns a PrimaryPair (lib/replication/primary.ts): opened when the
 * job is opened, its journals replayed and attached in `prepare` — at start,
 * before the host mounts and after every job's held space is marked — and run until `replicate stop` (the job's cancel), which detaches
 * the journal and deletes it; the secondary keeps its read-only volume.
 *
 * Verbs: pause/resume stop and restart shipping (the journal keeps
 * recording; past its limit, dirty marks); cancel = stop; complete is
 * refused (a pair runs until stopped); halt (daemon stop) stops the loop and
 * leaves the journal attached so writes during shutdown are still recorded —
 * the manager closes the journals after the volumes drained.
 *
 * Relay changes (issue 15): a relay that adopts the job of a volume it took
 * over has none of its journal — nor has a daemon that lost it — and starts
 * the pair over as a takeover epoch (`takeOver`: the new epoch's log, then
 * its record in this job's catalog record; a crash between them is undone
 * at the next open, crash point replication.takeover.prepared); `release`
 * stops the pair on the relay that no longer serves the volume, and at a
 * `volume move` records where the secondary caught up (`handedOver`), so
 * the next relay numbers on without a resync.
 *
 * Progress: bytes of the initial sync or the current resync copied / to copy.
 */
import { readdir, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { crashPoint } from '../crash-points.js'
import { VvfsError } from '../errors.js'
import type { JobRecord, JobStatus, ReplicateJobRecord } from '../migration/job.js'
import { genesis } from '../replication/epoch.js'
import { removeJournalDirs, segmentJournalLogs } from '../replication/journal-chain.js'
import { PrimaryPair, type PairMember } from '../replication/primary.js'
import { loadPeerKey } from '../wire/auth.js'
import { parseHostPort } from '../wire/server.js'
import type { JobDetails, JobDriver, JobEnv, JobKindDriver, NewJob, ReplicationResources } from './driver.js'

export interface ReplicateOptions {
  /** The volumes: one, or the members of a consistency group (they share one sequence). */
  volumes: string[]
  /** The consistency group's name; needed for more than one volume. */
  group?: string
  to: string
  pair?: string
  peerKey: string
  rate?: number
  journalLimit?: number
  journalPolicy?: 'bitmap' | 'throttle'
  /** Issue 13.7 (reverse): the chain with the promote's epoch, and the journal kept since it. */
  chain?: ReplicateJobRecord['chain']
  journalDir?: string
}

function resources(env: JobEnv): ReplicationResources {
  if (!env.replication) throw new VvfsError('NOT_SUPPORTED', 'this daemon cannot run replication jobs')
  return env.replication
}

/** A `replicate start` request: checks it and describes the job. */
export async function newReplication(env: JobEnv, p: ReplicateOptions): Promise<NewJob> {
  const r = resources(env)
  if (p.volumes.length === 0) throw new VvfsError('INVALID_ARGUMENT', 'name a volume to replicate')
  if (p.volumes.length > 1 && !p.group) throw new VvfsError('INVALID_ARGUMENT', `${p.volumes.length} volumes share one sequence only as a consistency group: name it with --group`)
  if (new Set(p.volumes).size !== p.volumes.length) throw new VvfsError('INVALID_ARGUMENT', 'a volume is named twice')
  const volNos = p.volumes.map((v) => env.volumeNo(v))
  parseHostPort(p.to)
  await loadPeerKey(p.peerKey)
  for (const j of env.catalog.read().data.jobs) {
    const taken = j.kind === 'replicate' && j.status !== 'concluded' ? volNos.findIndex((n) => j.volNos.includes(n)) : -1
    if (taken >= 0) throw new VvfsError('JOB_STATE', `volume ${p.volumes[taken]} is already replicated by job ${j.id} (pair ${(j as ReplicateJobRecord).pair})`)
  }
  const job: Omit<ReplicateJobRecord, 'id' | 'status' | 'total' | 'current' | 'createdAt'> = {
    kind: 'replicate',
    volNos,
    ...(p.group ? { group: p.group } : {}),
    peer: p.to,
    pair: p.pair ?? p.group ?? p.volumes[0]!,
    peerKey: p.peerKey,
    rate: p.rate ?? 0,
    journalLimit: p.journalLimit,
    journalPolicy: p.journalPolicy,
    chain: p.chain ?? [genesis(r.home(volNos[0]!))],
    ...(p.journalDir !== undefined ? { journalDir: p.journalDir } : {}),
    sourceSids: [],
    mode: 'direct',
    keepMs: 0,
    phases: 1,
    phase: 0,
  }
  return job as NewJob
}

/**
 * The pair's current journal is not in this daemon: another relay owned the
 * volume until this one took it over (issue 15), or the journal was lost.
 * Starts the pair over here as a new epoch whose resync covers everything
 * the secondary may lack (PrimaryPair.takeOver), and commits the chain —
 * with the journal now in this daemon's own state directory — in one
 * catalog update; the secondary refuses what the old owner may still send
 * (its numbers are all below the new epoch's, and the resync's base is past
 * them).
 */
async function takeOver(job: ReplicateJobRecord, env: JobEnv, members: PairMember[]): Promise<void> {
  const r = resources(env)
  const home = r.home(job.volNos[0]!)
  const current = job.chain[job.chain.length - 1]!
  const handedOverAt = job.handedOver?.epoch === current.epoch ? job.handedOver.lastSeq : undefined
  const chain = await PrimaryPair.takeOver({ members, journalDir: r.journalDir(job.id), chain: job.chain, journal: journalSettings(job) }, home, handedOverAt)
  crashPoint('replication.takeover.prepared')
  const before = { chain: job.chain, journalDir: job.journalDir, handoffPending: job.handoffPending, handedOver: job.handedOver }
  job.chain = [...chain]
  delete job.journalDir
  delete job.handoffPending
  delete job.handedOver
  try {
    await env.save(job)
  } catch (err) {
    Object.assign(job, before)
    throw err
  }
  const record = chain[chain.length - 1]!
  env.log.warn(
    { event: 'replication.taken_over', pair: job.pair, epoch: record.epoch, home: record.home, firstSeq: record.firstSeq, resync: handedOverAt === undefined },
    handedOverAt === undefined
      ? `pair ${job.pair}: its journal is not here (the volume was taken over from another relay, or the journal was lost): epoch ${record.epoch} starts here, and a resync sends the secondary what it may lack`
      : `pair ${job.pair}: handed over caught up at ${handedOverAt}: epoch ${record.epoch} numbers on from ${record.firstSeq} here, no resync`,
  )
}

/** How long a `volume move` waits for the secondary to apply the last entries (part of the move's gap; past it, the next relay resyncs). */
const HANDOVER_SETTLE_MS = 2000

function journalSettings(job: ReplicateJobRecord) {
  return { ...(job.journalLimit ? { limitBytes: job.journalLimit, hardLimitBytes: Math.max(2 * job.journalLimit, job.journalLimit) } : {}), ...(job.journalPolicy ? { policy: job.journalPolicy } : {}) }
}

class ReplicateDriver implements JobDriver<ReplicateJobRecord> {
  private finish!: () => void
  readonly done: Promise<void>
  private stopping = false

  private constructor(
    readonly job: ReplicateJobRecord,
    private readonly env: JobEnv,
    private readonly pair: PrimaryPair,
  ) {
    this.done = new Promise((r) => (this.finish = r))
  }

  static async open(job: ReplicateJobRecord, env: JobEnv): Promise<ReplicateDriver> {
    const r = resources(env)
    const volumes = env.catalog.read().data.volumes
    const members: PairMember[] = job.volNos.map((volNo) => {
      const layer = r.journalLayer(volNo)
      if (!layer) throw new VvfsError('VOLUME_NOT_FOUND', `replication job ${job.id}: volume #${volNo} is gone`)
      const name = volumes.find((v) => v.no === volNo)?.name ?? `#${volNo}`
      return { volNo, name, layer, size: () => r.volumeSize(volNo), allocatedExtents: () => r.allocatedExtents(volNo) }
    })
    const volumeName = members.map((m) => m.name).join(',')
    const { host, port } = parseHostPort(job.peer)
    const key = await loadPeerKey(job.peerKey)
    // A reversed pair (issue 13.7) starts from the promoted journal: no initial sync.
    const isNew = job.status === 'created' && job.journalDir === undefined
    const current = job.chain[job.chain.length - 1]!
    if (!isNew && !(await segmentJournalLogs(job.journalDir ?? r.journalDir(job.id)).exists(current.epoch))) await takeOver(job, env, members)
    else if (job.handedOver) {
      // This relay still has the journal (a move that did not complete, the volume taken back): it numbers on; the hand-over point is void.
      delete job.handedOver
      await env.save(job)
    }
    const ref: { driver?: ReplicateDriver } = {}
    const pair = await PrimaryPair.open(
      {
        pair: job.pair,
        group: job.group ?? null,
        members,
        journalDir: job.journalDir ?? r.journalDir(job.id),
        host,
        port,
        key,
        rate: job.rate,
        chain: job.chain,
        journal: journalSettings(job),
        // A handoff's epoch record and management information: one catalog update of this job's record.
        commitChain: async (c) => {
          const driver = ref.driver!
          const before = { chain: driver.job.chain, handoffPending: driver.job.handoffPending }
          driver.job.chain = [...c.chain]
          if (c.pending) driver.job.handoffPending = c.pending
          try {
            await env.save(driver.job)
          } catch (err) {
            Object.assign(driver.job, before)
            throw err
          }
        },
        handoffPending: () => ref.driver?.job.handoffPending,
        log: env.log,
        onState: (from, to, reason) => r.stateChanged({ pair: job.pair, volume: volumeName, from, to, reason }),
        onProgress: (copied, total) => {
          const job = ref.driver?.job
          if (!job) return
          job.total = Math.max(job.total, total)
          job.current = Math.min(job.total, Math.max(job.current, copied))
          env.progressed(job)
        },
      },
      isNew,
    )
    ref.driver = new ReplicateDriver(job, env, pair)
    r.pairs.set(job.id, pair)
    return ref.driver
  }

  /** The journal's redo into the volume (JobDriver.prepare: after every job's held space is marked). */
  prepare(): Promise<void> {
    return this.pair.replay()
  }

  /**
   * Hands the journal over to the volume's home if they differ: after a
   * migration switched the home (its hook calls this), and at start (a crash
   * between the migration's commit and the handoff's). Never throws: a
   * failed handoff is logged and tried again at the next home change or start.
   */
  async followHome(): Promise<void> {
    if (this.stopping || this.job.status === 'concluded') return
    await this.pair.followHome(resources(this.env).home(this.job.volNos[0]!))
  }

  start(): void {
    void this.followHome()
    if (this.job.status === 'paused') {
      this.pair.start()
      this.pair.pause()
      return
    }
    void this.setStatus('running')
    this.pair.start()
  }

  pause(): void {
    if (this.job.status !== 'running') throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${this.job.status}, not running`)
    this.pair.pause()
    void this.setStatus('paused')
  }

  resume(): void {
    if (this.job.status !== 'paused') throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${this.job.status}, not paused`)
    this.pair.resume()
    void this.setStatus('running')
  }

  /** `replicate stop`: ends the pair here (the secondary keeps its volume). */
  cancel(): void {
    if (this.stopping || this.job.status === 'concluded') throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${this.job.status}`)
    this.stopping = true
    void (async () => {
      try {
        await this.pair.close()
        await removeJournalDirs(this.job.journalDir ?? resources(this.env).journalDir(this.job.id))
      } catch (err) {
        this.env.log.error({ event: 'replication.stop_failed', pair: this.job.pair, err: (err as Error).message }, 'stopping the pair failed')
      }
      resources(this.env).pairs.delete(this.job.id)
      this.job.result = 'cancelled'
      this.job.finishedAt = new Date().toISOString()
      await this.setStatus('concluded')
      this.finish()
    })()
  }

  complete(): void {
    throw new VvfsError('JOB_STATE', `job ${this.job.id} replicates until stopped (vvfs replicate stop ${this.job.pair})`)
  }

  async halt(): Promise<void> {
    await this.pair.halt()
    this.finish()
  }

  /**
   * The volume is served elsewhere now: the pair stops here and its journal
   * closes (kept: should the volume come back before another relay took it,
   * it goes on from there). A handover (`volume move`) first lets the
   * secondary catch up, for at most HANDOVER_SETTLE_MS of the move's gap,
   * and records where it did: the next relay then goes on without a resync.
   */
  async release(opts: { handover?: boolean } = {}): Promise<void> {
    try {
      // A group's volumes move one at a time: the others stay served here unjournaled meanwhile, so only a pair of one volume hands over without a resync.
      const lastSeq = opts.handover && this.job.volNos.length === 1 ? await this.pair.settle(HANDOVER_SETTLE_MS) : null
      await this.pair.close()
      resources(this.env).pairs.delete(this.job.id)
      if (lastSeq !== null) {
        this.job.handedOver = { epoch: this.job.chain[this.job.chain.length - 1]!.epoch, lastSeq }
        await this.env.save(this.job)
      }
    } finally {
      this.finish()
    }
  }

  progress(): { current: number; total: number } {
    return { current: this.job.current, total: this.job.total }
  }

  private async setStatus(to: JobStatus): Promise<void> {
    const from = this.job.status
    if (from === to) return
    this.job.status = to
    if (to === 'running' && !this.job.startedAt) this.job.startedAt = new Date().toISOString()
    await this.env.save(this.job)
    this.env.statusChanged(this.job, from)
  }
}

export const replicateJobs: JobKindDriver = {
  kinds: ['replicate'],
  open: (job: JobRecord, env: JobEnv) => ReplicateDriver.open(job as ReplicateJobRecord, env),
  describe(job: JobRecord): JobDetails {
    const r = job as ReplicateJobRecord
    return { to: `${r.peer} (${r.pair})`, mode: 'direct', rate: r.rate, keepMs: 0 }
  },
  /**
   * Journal logs no pair can open again: of jobs concluded or gone from the
   * catalog (a `replicate stop` cut short after it deleted some, a pair
   * stopped on another relay of the cluster). Logs of live jobs stay, also
   * those of pairs another relay runs now (a relay that gets the volume back
   * starts over and drops them then).
   */
  async cleanStale(_live, env) {
    if (!env.replication) return
    const root = dirname(env.replication.journalDir(0))
    let names: string[]
    try {
      names = await readdir(root)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    const jobs = env.catalog.read().data.jobs
    for (const name of names) {
      const m = /^job-(\d+)(\.e\d+)?$/.exec(name)
      if (!m) continue
      const job = jobs.find((j) => j.id === Number(m[1]))
      if (job?.kind === 'replicate' && job.status !== 'concluded') continue
      await rm(join(root, name), { recursive: true, force: true })
      env.log.info({ event: 'replication.stale_journal', dir: name }, `journal ${name} belongs to no live pair: deleted`)
    }
  },
}
