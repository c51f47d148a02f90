/**
 * Ports for test servers: a port handed out as free must not be one any outgoing
 * connection can take a moment later, and etcd started on a port someone took in
 * between comes up on another one instead of failing the test file (CI lost a run to
 * "bind: address already in use").
 */
import { createServer, type Server } from 'node:net'
import { readFileSync } from 'node:fs'
import { afterAll, describe, expect, it, vi } from 'vitest'

const taken: Server[] = []
let occupied = 0

vi.mock('../../bench/proc.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../bench/proc.js')>()
  let calls = 0
  return {
    ...real,
    // The first port handed to etcd is one this test already listens on.
    freePort: async () => (calls++ === 0 && occupied ? occupied : real.freePort()),
  }
})

const { freePort } = await vi.importActual<typeof import('../../bench/proc.js')>('../../bench/proc.js')
const { startEtcd, stopAllEtcd } = await import('../helpers/etcd.js')

afterAll(async () => {
  await stopAllEtcd()
  for (const s of taken) s.close()
})

describe('ports for test servers', () => {
  it('hands out ports below the kernel ephemeral range, free to bind', async () => {
    const ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    for (let i = 0; i < 20; i++) {
      const port = await freePort()
      expect(port).toBeLessThan(ephemeralLow)
      const s = createServer()
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject)
        s.listen(port, '127.0.0.1', resolve)
      })
      await new Promise((r) => s.close(r))
    }
  })

  it('starts etcd on other ports when the chosen client port was taken in between', async () => {
    occupied = await freePort()
    const s = createServer()
    await new Promise<void>((r) => s.listen(occupied, '127.0.0.1', r))
    taken.push(s)
    const etcd = await startEtcd()
    expect(new URL(etcd.url).port).not.toBe(String(occupied))
    const r = await fetch(`${etcd.url}/health`)
    expect(r.ok).toBe(true)
    await etcd.stop()
  }, 60_000)
})
