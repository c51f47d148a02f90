/**
 * Daemon log lines: human-readable when stderr is a terminal, JSON
 * otherwise; --log-format json|pretty overrides either way. The terminal is
 * a pseudo-terminal from script(1); Ctrl-C stops the daemon cleanly.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { onTerminal, runUntil } from '../helpers/cli.js'
import { cleanupAll, removeDir, startDaemon, tempDir, unmountUnder, VVFS } from '../helpers/daemon.js'

const dirs: string[] = []
afterAll(async () => {
  await cleanupAll()
  for (const d of dirs) removeDir(d)
})

/** A pretty line: time, level, event, message, then key=value fields. */
const PRETTY_CREATED = /^\d\d:\d\d:\d\d\.\d{3} {2}INFO {3}volume\.created {2}volume created {2}name=demo id=[0-9a-f-]{36} size=1073741824 hosts=\["local"\]$/m

/** The terminal's colour codes for INFO, as words. */
const named = (out: string) => out.replaceAll('\x1b[32m', '<green>').replaceAll('\x1b[0m', '<reset>').replaceAll('\r', '')

/** Runs the daemon with stdout and stderr on a pseudo-terminal until it is ready, then Ctrl-C; its output. */
async function daemonOnTerminal(extra: string[]): Promise<string> {
  const dir = tempDir()
  dirs.push(dir)
  const line = [process.execPath, VVFS, 'daemon', '--state', join(dir, 'state'), '--mount', join(dir, 'mnt'), '--demo', ...extra].join(' ')
  try {
    const r = await runUntil(...onTerminal(line), (out) => /daemon ready/.test(out), (p) => p.stdin!.write('\x03'))
    expect(r.code).toBe(0)
    return r.out
  } finally {
    unmountUnder(dir)
  }
}

describe('daemon log format', () => {
  it('is JSON when stderr is not a terminal', async () => {
    const d = await startDaemon({ extraArgs: ['--demo'] })
    dirs.push(d.dir)
    expect(await d.stop()).toBe(0)
    const lines = d.log().trim().split('\n')
    const events = lines.map((l) => (JSON.parse(l) as { event: string }).event)
    expect(events).toEqual(expect.arrayContaining(['daemon.starting', 'volume.created', 'daemon.ready', 'daemon.stopping']))
  })

  it('is pretty with --log-format pretty, even into a file', async () => {
    const d = await startDaemon({ extraArgs: ['--demo', '--log-format', 'pretty'] })
    dirs.push(d.dir)
    expect(await d.stop()).toBe(0)
    const log = readFileSync(join(d.dir, 'daemon.log'), 'utf8')
    expect(log).toMatch(PRETTY_CREATED)
    expect(log).not.toContain('\x1b[')
    expect(log).not.toMatch(/^\{/m)
  })

  it('is pretty, with coloured levels, on a terminal', async () => {
    const out = await daemonOnTerminal([])
    expect(named(out)).toMatch(/<green>INFO <reset> {2}daemon\.ready {2}vvfs daemon ready/)
    expect(named(out).replaceAll('<green>', '').replaceAll('<reset>', '')).toMatch(PRETTY_CREATED)
    expect(out).toMatch(/daemon\.stopping/)
  })

  it('is JSON on a terminal with --log-format json', async () => {
    const out = await daemonOnTerminal(['--log-format', 'json'])
    const lines = out.replace(/\r/g, '').split('\n').filter((l) => l.startsWith('{'))
    const events = lines.map((l) => (JSON.parse(l) as { event: string }).event)
    expect(events).toEqual(expect.arrayContaining(['daemon.starting', 'volume.created', 'daemon.ready']))
  })
})
