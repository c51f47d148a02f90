/**
 * Who can reach the web view: nothing listens without --http; a daemon asked
 * to serve it on a non-loopback address without a token refuses to start;
 * with a token every request without it (or with a wrong one) gets 401; on
 * loopback without a token, a request for another host name gets 403 (DNS
 * rebinding); the view answers no method but GET and HEAD.
 */
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanupAll, removeDir, startDaemon, tempDir, VVFS } from '../helpers/daemon.js'
import { freePort } from '../helpers/browser.js'

afterAll(cleanupAll)

/** TCP ports a process listens on, from its socket inodes in /proc. */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>()
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))
      if (m) inodes.add(m[1]!)
    } catch {
      // closed meanwhile
    }
  }
  const ports: number[] = []
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      // st 0A is LISTEN; field 9 is the inode.
      if (f[3] === '0A' && inodes.has(f[9]!)) ports.push(parseInt(f[1]!.split(':')[1]!, 16))
    }
  }
  return ports
}

function get(port: number, path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers }, (res) => {
      const type = String(res.headers['content-type'] ?? '')
      if (type.startsWith('text/event-stream')) {
        // A stream never ends: its first event is enough.
        res.once('data', (chunk: Buffer) => {
          resolve({ status: res.statusCode!, type, body: chunk.toString() })
          req.destroy()
        })
        return
      }
      let body = ''
      res.on('data', (c: Buffer) => (body += c.toString()))
      res.on('end', () => resolve({ status: res.statusCode!, type, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

describe('web view access', () => {
  it('listens on nothing without --http, and on its port with it', async () => {
    const plain = await startDaemon()
    expect(listeningPorts(plain.proc.pid!)).toEqual([])
    expect(plain.log()).not.toContain('http.listening')
    await plain.stop()

    const port = await freePort()
    const served = await startDaemon({ extraArgs: ['--http', `127.0.0.1:${port}`] })
    expect(listeningPorts(served.proc.pid!)).toEqual([port])
    const page = await get(port, '/')
    expect(page.status).toBe(200)
    expect(page.type).toContain('text/html')
    // Loopback without a token: a page that asked for another host name is refused.
    expect((await get(port, '/api/state', { Host: `attacker.example:${port}` })).status).toBe(403)
    // Read-only: no method but GET and HEAD.
    expect((await get(port, '/api/state', {}, 'POST')).status).toBe(405)
    expect((await get(port, '/api/state', {}, 'DELETE')).status).toBe(405)
    // Bad input is a 4xx with a code, never a failure of the daemon.
    expect((await get(port, '/api/volume/%E0%A4%A/map')).status).toBe(400)
    expect((await get(port, '/api/volume/nobody/map')).status).toBe(404)
    expect((await get(port, '/api/volume/nobody/map?tiles=0')).status).toBe(400)
    expect((await get(port, '/api/state')).status).toBe(200)
    await served.stop()
  })

  it('refuses to start on a non-loopback address without a token', () => {
    const dir = tempDir()
    try {
      const r = spawnSync(process.execPath, [VVFS, 'daemon', '--state', join(dir, 'state'), '--mount', join(dir, 'mnt'), '--http', '0.0.0.0:0'], { encoding: 'utf8', timeout: 30_000 })
      expect(r.status).toBe(1)
      expect(r.stderr).toContain('INVALID_ARGUMENT')
      expect(r.stderr).toContain('--http-token')
      // Refused before anything was opened: no state directory was made.
      expect(readdirSync(dir)).toEqual([])
    } finally {
      removeDir(dir)
    }
  })

  it('refuses to start, and leaves no mount, when the port is taken', async () => {
    const dir = tempDir()
    const taken = createServer()
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()))
    try {
      const port = (taken.address() as AddressInfo).port
      const mount = join(dir, 'mnt')
      const r = spawnSync(process.execPath, [VVFS, 'daemon', '--state', join(dir, 'state'), '--mount', mount, '--http', `127.0.0.1:${port}`], { encoding: 'utf8', timeout: 30_000 })
      expect(r.status).toBe(1)
      expect(r.stderr).toContain('IO_ERROR')
      expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(mount)
    } finally {
      await new Promise((r) => taken.close(r))
      removeDir(dir)
    }
  })

  it('with a token, answers 401 to every request without it or with a wrong one', async () => {
    const dir = tempDir()
    const token = 'f3a9c1d2e4b5a6978877665544332211'
    writeFileSync(join(dir, 'token'), `${token}\n`, { mode: 0o600 })
    const port = await freePort()
    const d = await startDaemon({ dir, extraArgs: ['--http', `0.0.0.0:${port}`, '--http-token', join(dir, 'token')] })
    for (const path of ['/', '/api/state', '/api/events', '/api/volume/x/map', '/nowhere']) {
      const none = await get(port, path)
      expect(none.status, path).toBe(401)
      expect(none.body).not.toContain('"volumes"')
      expect((await get(port, path, { Authorization: `Bearer ${token}x` })).status, path).toBe(401)
      expect((await get(port, `${path}?token=${token.slice(0, -1)}`)).status, path).toBe(401)
    }
    const byHeader = await get(port, '/api/state', { Authorization: `Bearer ${token}` })
    expect(byHeader.status).toBe(200)
    expect(JSON.parse(byHeader.body).volumes).toEqual([])
    expect((await get(port, `/?token=${token}`)).status).toBe(200)
    const stream = await get(port, `/api/events?token=${token}`)
    expect(stream.status).toBe(200)
    expect(stream.type).toContain('text/event-stream')
    await d.stop()
  })
})
