/**
 * `--watch` on `vvfs job list` and `vvfs pool status`: on a terminal (a
 * pseudo-terminal from script(1)) the table is redrawn in place and Ctrl-C
 * exits 0; on a pipe each refresh is printed plainly and shows what changed;
 * with --json one document per refresh.
 */
import { describe, expect, it } from 'vitest'
import { daemonForFile, onTerminal, runUntil } from '../helpers/cli.js'
import { VVFS } from '../helpers/daemon.js'

const { daemon } = daemonForFile({ extraArgs: ['--demo'] })

const HOME = '\x1b[H'

const frames = (out: string) => out.split(HOME).length - 1

describe('vvfs … --watch', () => {
  it('redraws pool status in place on a terminal, and Ctrl-C exits 0', async () => {
    const line = `${process.execPath} ${VVFS} pool status --watch --interval 200ms --socket ${daemon().socket}`
    const r = await runUntil(...onTerminal(line), (out) => frames(out) >= 3, (p) => p.stdin!.write('\x03'))
    expect(r.code).toBe(0)
    expect(r.out.startsWith('\x1b[2J')).toBe(true)
    // Every frame starts at the top left, says what it shows, and clears what the last one left.
    const shown = r.out.split(HOME).slice(1)
    for (const f of shown.slice(0, 3)) {
      expect(f).toMatch(/^every 0\.2s: vvfs pool status/)
      expect(f).toMatch(/TOTAL\s+12 GiB/)
      expect(f).toContain('\x1b[J')
    }
  })

  it('prints each refresh of job list plainly on a pipe, showing a job that started meanwhile', async () => {
    let started = false
    const r = await runUntil(
      process.execPath,
      [VVFS, 'job', 'list', '--watch', '--interval', '200ms', '--socket', daemon().socket],
      (out) => /^1\s+migrate\s/m.test(out),
      (p) => p.kill('SIGINT'),
      async (out) => {
        if (started || !out.includes('no jobs')) return
        started = true
        await daemon().client.call('migrate.start', { volume: 'demo', to: 'ss2' })
      },
    )
    expect(r.code).toBe(0)
    expect(r.out).not.toContain('\x1b[')
    expect(r.out.indexOf('no jobs')).toBeLessThan(r.out.search(/^ID\s+KIND\s+STATUS/m))
    expect(r.err).toBe('')
  })

  it('prints one JSON document per refresh with --json', async () => {
    const r = await runUntil(
      process.execPath,
      [VVFS, 'pool', 'status', '--watch', '--json', '--interval', '100ms', '--socket', daemon().socket],
      (out) => out.split('\n').length > 3,
      (p) => p.kill('SIGINT'),
    )
    expect(r.code).toBe(0)
    const docs = r.out.trim().split('\n').map((l) => JSON.parse(l) as { capacity: number })
    expect(docs.length).toBeGreaterThanOrEqual(3)
    for (const d of docs) expect(d.capacity).toBe(12 * 1024 ** 3)
  })
})
