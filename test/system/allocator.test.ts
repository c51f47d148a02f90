/**
 * A daemon and a storage server run with glibc's malloc arena limit from
 * their first instruction (lib/malloc-tuning.ts): each starts itself again
 * once, in its own place — same pid, same arguments — with
 * MALLOC_ARENA_MAX in its environment, which glibc reads only at process
 * start; a value the operator set is kept. The daemon also gets node's
 * --max-semi-space-size (lib/gc-tuning.ts startFlags), which node reads
 * only at its start, unless the operator gave one or the daemon is started
 * for replication peers.
 */
import { readFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { SEMI_SPACE_MB } from '../../lib/gc-tuning.js'
import { MAX_ARENAS } from '../../lib/malloc-tuning.js'
import { cleanupAll, startDaemon } from '../helpers/daemon.js'
import { cleanup, freePort, newKey, spawnServer, tempDir } from '../remote/servers.js'

afterAll(async () => {
  await cleanupAll()
  await cleanup()
})

function environOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0')
}

function argsOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').filter(Boolean)
}

describe('the malloc arena limit from process start', () => {
  it('a daemon starts itself again once, same pid and arguments, with MALLOC_ARENA_MAX set', async () => {
    const d = await startDaemon()
    const pid = d.proc.pid!
    expect(environOf(pid)).toContain(`MALLOC_ARENA_MAX=${MAX_ARENAS}`)
    const [program, ...rest] = d.proc.spawnargs
    expect(argsOf(pid)).toEqual([program, `--max-semi-space-size=${SEMI_SPACE_MB}`, ...rest])
    // Its name too: exec of /proc/self/exe would have named it "exe".
    expect(readFileSync(`/proc/${pid}/comm`, 'latin1').trim()).toBe(basename(process.execPath))
    // The first run logged nothing before it re-executed: one start in the log.
    const log = readFileSync(join(d.dir, 'daemon.log'), 'utf8')
    expect(log.match(/"daemon\.starting"/g)).toHaveLength(1)
    expect(log).not.toContain('memory.reexec_failed')
  })

  it("keeps the operator's MALLOC_ARENA_MAX, and their young generation", async () => {
    const d = await startDaemon({ env: { MALLOC_ARENA_MAX: '4' } })
    expect(environOf(d.proc.pid!)).toContain('MALLOC_ARENA_MAX=4')
    expect(argsOf(d.proc.pid!)).toContain(`--max-semi-space-size=${SEMI_SPACE_MB}`)
    const theirs = await startDaemon({ env: { MALLOC_ARENA_MAX: '4', NODE_OPTIONS: '--max-semi-space-size=8' } })
    expect(argsOf(theirs.proc.pid!)).toEqual(theirs.proc.spawnargs)
    expect(environOf(theirs.proc.pid!).some((e) => e.startsWith('VVFS_REEXECUTED='))).toBe(false)
  })

  it("a daemon started for replication peers keeps node's young generation (replication is faster with it)", async () => {
    const { file } = await newKey()
    const d = await startDaemon({ extraArgs: ['--peer-key', file] })
    expect(environOf(d.proc.pid!)).toContain(`MALLOC_ARENA_MAX=${MAX_ARENAS}`)
    expect(argsOf(d.proc.pid!)).toEqual(d.proc.spawnargs)
  })

  it('a storage server does the same', async () => {
    const { file } = await newKey()
    const server = await spawnServer({ dir: `${await tempDir()}/server`, port: await freePort(), keyFile: file })
    expect(environOf(server.proc.pid!)).toContain(`MALLOC_ARENA_MAX=${MAX_ARENAS}`)
    expect(argsOf(server.proc.pid!)).toEqual(server.proc.spawnargs) // node's own young generation
    expect(server.log().match(/"storage\.serving"/g)).toHaveLength(1)
  })
})
