/**
 * Reclaim on a replicated volume (issue 13, build point 3: "reclaim's
 * releases" are changes like any other): the chunks reclaim releases on the
 * primary are journal entries, so the secondary drops them too and the two
 * images stay byte-identical — zeros where ext4's freed file was, on both.
 * The file system is made and changed with mkfs/debugfs straight on the
 * volume file (no mount: reclaim needs the volume closed).
 */
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { cleanupAll, sh } from '../helpers/daemon.js'
import { removePairDirs, caughtUp, startPair, waitForPair, type Pair } from './daemons.js'
import { vvfs } from './failover-helpers.js'

const MiB = 1024 * 1024
let p: Pair

afterAll(async () => {
  await cleanupAll()
  removePairDirs(p)
})

/** The volume-file ranges (bytes) of a file in the ext4 on `image`. */
function fileRanges(image: string, path: string): [number, number][] {
  const out = sh('debugfs', ['-R', `ex ${path}`, image])
  return [...out.matchAll(/^\s*\d+\/\s*\d+\s+\d+\/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)\s*-\s*(\d+)/gm)].map((m) => [Number(m[1]) * 4096, (Number(m[2]) + 1) * 4096])
}

describe('reclaim on a replicated volume', () => {
  it("ships reclaim's releases: the secondary drops the freed chunks too and the images stay identical", async () => {
    p = await startPair()
    const { primary, secondary } = p
    await primary.client.call('volume.create', { name: 'fs', size: 64 * MiB })
    const file = primary.file('fs')
    sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'nodiscard,lazy_itable_init=0', file])
    const data = join(p.dir, 'big')
    writeFileSync(data, randomBytes(8 * MiB))
    sh('debugfs', ['-w', '-R', `write ${data} big`, file])
    const ranges = fileRanges(file, '/big')
    expect(ranges.reduce((a, [s, e]) => a + e - s, 0)).toBe(8 * MiB)

    const started = vvfs(primary)('replicate', 'start', 'fs', '--to', p.secondaryAddress, '--as', 'fs-copy', '--peer-key', p.keyFile, '--json')
    expect(started.code, started.err).toBe(0)
    await waitForPair(primary, 'fs-copy', 'primary', caughtUp)
    const copy = secondary.file('fs-copy')
    // The premise: the file's data is on both sides.
    for (const [s, e] of ranges) expect(readFileSync(copy).subarray(s, e).equals(readFileSync(file).subarray(s, e))).toBe(true)
    const before = await waitForPair(primary, 'fs-copy', 'primary', caughtUp)
    const allocatedBefore = ((await secondary.client.call('volume.show', { name: 'fs-copy' })) as { allocated: number }).allocated

    sh('debugfs', ['-w', '-R', 'rm big', file])
    const reclaimed = vvfs(primary)('volume', 'reclaim', 'fs', '--json')
    expect(reclaimed.code, reclaimed.err).toBe(0)
    expect((JSON.parse(reclaimed.out) as { releasedBytes: number }).releasedBytes).toBeGreaterThanOrEqual(8 * MiB)

    // The releases are entries: numbered after the rm, shipped and applied.
    const after = await waitForPair(primary, 'fs-copy', 'primary', (s) => caughtUp(s) && s.lastWritten > before.lastWritten)
    const sec = await waitForPair(secondary, 'fs-copy', 'secondary', (s) => s.lastApplied === after.lastWritten)
    expect(sec.consistent).toBe(true)
    const [a, b] = [readFileSync(file), readFileSync(copy)]
    expect(Buffer.compare(a, b)).toBe(0)
    for (const [s, e] of ranges) expect(b.subarray(s, e).every((x) => x === 0)).toBe(true)
    // And the secondary's storage gave the space back (its own layout: whole slots where it applied runs).
    const allocatedAfter = ((await secondary.client.call('volume.show', { name: 'fs-copy' })) as { allocated: number }).allocated
    expect(allocatedBefore - allocatedAfter).toBeGreaterThanOrEqual(6 * MiB)
  })
})
