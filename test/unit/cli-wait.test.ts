/**
 * `--wait` on a job that ends before the daemon has answered the event
 * subscription: the CLI closes its connection with that request still
 * pending. It used to reject unhandled and crash the CLI with
 * CONNECTION_FAILED after printing the finished job (found running fsx
 * against a volume while `vvfs migrate --wait` ran in a loop).
 */
import { describe, expect, it } from 'vitest'
import type { ControlClient } from '../../lib/control/client.js'
import type { JobInfo } from '../../lib/control/schema.js'
import { VvfsError } from '../../lib/errors.js'
import { waitForJob } from '../../lib/cli/jobs.js'

const concluded = { id: 7, kind: 'migrate', status: 'concluded', result: 'completed', volumes: ['v'], mode: 'direct', rate: 0, keepMs: 0, auto: false, createdAt: '', progress: { current: 1, total: 1, percent: 100, bytesPerSecond: 0, etaSeconds: 0 } } as unknown as JobInfo

describe('vvfs … --wait', () => {
  it('ends cleanly when the job is over before the subscription is answered and the connection closes', async () => {
    const unhandled: unknown[] = []
    const onUnhandled = (err: unknown) => unhandled.push(err)
    process.on('unhandledRejection', onUnhandled)
    try {
      // The connection closes (the CLI is done) before the daemon answers the subscription.
      const client = {
        call: (method: string) =>
          method === 'job.show'
            ? Promise.resolve(concluded)
            : new Promise((_, reject) => setTimeout(() => reject(new VvfsError('CONNECTION_FAILED', 'the daemon closed the connection')), 5)),
        onEvent: () => () => {},
      } as unknown as ControlClient
      const done = await waitForJob(client, 7, true)
      expect(done.status).toBe('concluded')
      await new Promise((r) => setTimeout(r, 50))
      expect(unhandled).toEqual([])
    } finally {
      process.off('unhandledRejection', onUnhandled)
    }
  })
})
