/**
 * The JobManager runs jobs of any kind through their drivers
 * (lib/jobs/driver.ts): a kind it knows only by its registered driver — here
 * a converging one, like a mirror: running → ready, then `complete` — is
 * started, listed, completed, committed to the catalog at every status
 * change and announced as job.status events, and reopened at start.
 */
import { join } from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import type { JobInfo, JobStatus as JobStatusEvent } from '../../lib/control/schema.js'
import { VvfsError } from '../../lib/errors.js'
import type { JobDriver, JobEnv, JobKindDriver, NewJob } from '../../lib/jobs/driver.js'
import { silentLogger } from '../../lib/log.js'
import { FileCatalog } from '../../lib/manager/catalog.js'
import { JobManager, type JobHost } from '../../lib/manager/jobs.js'
import type { JobKind, JobRecord, JobStatus } from '../../lib/migration/job.js'
import { MapStore } from '../../lib/relay/map-store.js'
import type { ChunkMover } from '../../lib/storage/chunk-mover.js'
import { Pool } from '../../lib/storage/pool.js'
import { removeDir, tempDir } from '../helpers/daemon.js'

type StatusEvent = { job: JobInfo; from: (typeof JobStatusEvent)['_output'] | null }

/** A job that converges: it reports ready once in sync, and concludes when completed. */
class MirrorDriver implements JobDriver {
  done: Promise<void> = Promise.resolve()
  private completing = false
  private halted = false
  private wake: (() => void) | undefined

  constructor(
    readonly job: JobRecord,
    private readonly env: JobEnv,
  ) {}

  start(): void {
    this.done = this.run()
  }

  private async run(): Promise<void> {
    if (this.job.status === 'created') await this.set('running')
    if (this.job.status === 'running') {
      this.job.total = 4096
      this.job.current = 4096
      this.env.progressed(this.job)
      await this.set('ready')
    }
    while (!this.completing && !this.halted) await new Promise<void>((r) => (this.wake = r))
    if (this.halted) return
    this.job.result = 'completed'
    await this.set('concluded')
  }

  private async set(status: JobStatus): Promise<void> {
    const from = this.job.status
    this.job.status = status
    await this.env.save(this.job)
    this.env.statusChanged(this.job, from)
  }

  complete(): void {
    if (this.job.status !== 'ready') throw new VvfsError('JOB_STATE', `job ${this.job.id} is ${this.job.status}, not ready`)
    this.completing = true
    this.wake?.()
  }

  pause(): void {
    throw new VvfsError('JOB_STATE', 'a mirror does not pause')
  }

  resume(): void {
    throw new VvfsError('JOB_STATE', 'a mirror does not pause')
  }

  cancel(): void {
    throw new VvfsError('JOB_STATE', 'a mirror is completed, not cancelled')
  }

  async halt(): Promise<void> {
    this.halted = true
    this.wake?.()
    await this.done
  }

  progress() {
    return { current: this.job.current, total: this.job.total }
  }
}

const MIRROR = 'mirror' as unknown as JobKind

const mirrorJobs: JobKindDriver = {
  kinds: [MIRROR],
  open: async (job, env) => new MirrorDriver(job, env),
  describe: () => ({ mode: 'direct', rate: 0, keepMs: 0 }),
}

const dirs: string[] = []
const closers: (() => Promise<void>)[] = []
afterEach(async () => {
  for (const c of closers.splice(0)) await c()
  for (const d of dirs.splice(0)) removeDir(d)
})

async function setup(dir?: string) {
  const state = dir ?? tempDir('vvfs-jobs-')
  if (!dir) dirs.push(state)
  const catalog = await FileCatalog.open(state)
  const maps = await MapStore.open(join(state, 'maps'))
  const events: StatusEvent[] = []
  const host: JobHost = {
    catalog,
    pool: new Pool(),
    maps,
    // The mirror moves no chunks.
    mover: {} as ChunkMover,
    log: silentLogger(),
    movable: () => undefined,
    volumeNo: () => 1,
    volumeName: (n) => `v${n}`,
    systemSid: () => 1,
    systemName: (sid) => `s${sid}`,
    hostOps: () => 0,
    emit: (type, body) => {
      if (type === 'job.status') events.push(body as StatusEvent)
    },
  }
  const jobs = new JobManager(host, [mirrorJobs])
  closers.push(async () => {
    await jobs.close()
    await maps.close()
  })
  return { state, catalog, jobs, events }
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 5))
  expect(check()).toBe(true)
}

describe('job drivers', () => {
  it('a job of a kind known only by its driver runs to ready, concludes on complete, and each status is committed and announced', async () => {
    const { catalog, jobs, events } = await setup()
    const started = await jobs.startJob(() => ({ job: { kind: MIRROR, volNos: [1] } as unknown as NewJob }))
    // The answer comes after the driver started: it is running.
    expect(started).toMatchObject({ id: 1, kind: 'mirror', status: 'running', volumes: ['v1'] })
    // The event follows the commit.
    await until(() => events.some((e) => e.job.status === 'ready'))
    expect(catalog.read().data.jobs[0]).toMatchObject({ id: 1, kind: 'mirror', status: 'ready', total: 4096, current: 4096 })
    expect(jobs.show(1).progress).toMatchObject({ current: 4096, total: 4096, percent: 100 })
    expect(jobs.activeJobOf(1)?.id).toBe(1)
    expect(() => jobs.pause(1)).toThrow(expect.objectContaining({ code: 'JOB_STATE' }))

    const rev = catalog.read().rev
    expect(jobs.complete(1).id).toBe(1)
    expect((await jobs.settled(1)).status).toBe('concluded')
    expect(catalog.read().rev).toBe(rev + 1)
    expect(catalog.read().data.jobs[0]).toMatchObject({ status: 'concluded', result: 'completed' })
    expect(events.map((e) => `${e.from ?? '-'}→${e.job.status}`)).toEqual(['-→created', 'created→running', 'running→ready', 'ready→concluded'])
    // A concluded job takes no more verbs.
    expect(() => jobs.complete(1)).toThrow(expect.objectContaining({ code: 'JOB_STATE' }))
    expect(jobs.activeJobOf(1)).toBeUndefined()
  })

  it('a job left ready by a stop is reopened by its driver at start and can be completed then', async () => {
    const first = await setup()
    await first.jobs.startJob(() => ({ job: { kind: MIRROR, volNos: [1] } as unknown as NewJob }))
    await until(() => first.events.some((e) => e.job.status === 'ready'))
    for (const c of closers.splice(0)) await c()
    expect(first.catalog.read().data.jobs[0]!.status).toBe('ready')

    const again = await setup(first.state)
    await again.jobs.restore()
    again.jobs.start()
    expect(again.jobs.show(1).status).toBe('ready')
    again.jobs.complete(1)
    expect((await again.jobs.settled(1)).result).toBe('completed')
    expect(again.catalog.read().data.jobs[0]).toMatchObject({ status: 'concluded', result: 'completed' })
  })

  it('starts run one at a time with their checks: two starts for one volume at once make one job, the other is refused', async () => {
    const { jobs, catalog } = await setup()
    // The request's check is a move's (one job per volume, lib/jobs/move.ts checkIdle), made before anything is recorded.
    const request = () => {
      const busy = jobs.activeJobOf(1)
      if (busy) throw new VvfsError('JOB_STATE', `volume v1 is already in job ${busy.id}`)
      return { job: { kind: MIRROR, volNos: [1] } as unknown as NewJob }
    }
    const results = await Promise.allSettled([jobs.startJob(request), jobs.startJob(request)])
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected'])
    expect(results.find((r) => r.status === 'rejected')).toMatchObject({ reason: { code: 'JOB_STATE' } })
    expect(catalog.read().data.jobs).toHaveLength(1)
  })
})
