/**
 * Mounts, loop devices and disk usage, as the bench needs them.
 *
 * Owns: reading /proc/self/mountinfo and losetup's list, attaching and
 * detaching loop devices, mounting ext4, `du`. Must never: touch a mount or
 * loop device outside the bench's own temp dir (the machine is shared; other
 * vvfs daemons may be running), so everything here is scoped by path.
 */
import { readFile } from 'node:fs/promises'
import { must, run, sleep, type Cleanup } from './proc.js'

export interface MountEntry {
  mountPoint: string
  fstype: string
  source: string
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

export async function mounts(): Promise<MountEntry[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  const out: MountEntry[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    const [pre, post] = line.split(' - ')
    const f = pre.split(' ')
    const g = (post ?? '').split(' ')
    out.push({ mountPoint: unescape(f[4]), fstype: g[0] ?? '', source: unescape(g[1] ?? '') })
  }
  return out
}

/** The mount whose mount point is exactly `path`, if any (the last one wins, as in the kernel). */
export async function mountAt(path: string): Promise<MountEntry | undefined> {
  return (await mounts()).filter((m) => m.mountPoint === path).pop()
}

export async function isFuseMountAt(path: string): Promise<boolean> {
  const m = await mountAt(path)
  return m !== undefined && m.fstype.startsWith('fuse')
}

/** Mounts at or below `dir`, deepest first (the order to unmount them in). */
export async function mountsUnder(dir: string): Promise<MountEntry[]> {
  return (await mounts()).filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(dir + '/')).reverse()
}

/** Lazy unmount of a FUSE mount; quiet if it is not mounted. */
export async function fusermountUz(path: string): Promise<void> {
  if (await isFuseMountAt(path)) await run('fusermount', ['-uz', path])
}

interface LoopInfo {
  name: string
  'back-file': string | null
}

/** Loop devices whose backing file lies at or below `dir` (from losetup's list: no stat of the file, which could hang on a dead FUSE mount). */
export async function loopsUnder(dir: string): Promise<string[]> {
  const r = await run('losetup', ['--list', '--json', '--output', 'NAME,BACK-FILE'])
  if (r.code !== 0 || !r.stdout.trim()) return []
  const list = (JSON.parse(r.stdout) as { loopdevices?: LoopInfo[] }).loopdevices ?? []
  // The kernel may append " (deleted)" to the backing file's name.
  return list.filter((l) => l['back-file'] && l['back-file'].replace(/ \(deleted\)$/, '').startsWith(dir + '/')).map((l) => l.name)
}

/**
 * Detaches a loop device and waits until it is gone. `losetup -d` on a busy
 * device only marks it for autoclear and returns at once; the device goes on
 * writing to its file — which must not be stopped under it — until then.
 */
export async function detachLoop(dev: string, waitMs = 60_000): Promise<void> {
  // A just-unmounted file system can keep the device busy for a moment.
  for (let i = 0; ; i++) {
    const r = await run('losetup', ['-d', dev])
    if (r.code === 0) break
    if (!(await loopAttached(dev))) return
    if (i >= 10) throw new Error(`losetup -d ${dev}: ${r.stderr.trim()}`)
    await sleep(500)
  }
  const deadline = Date.now() + waitMs
  while (await loopAttached(dev)) {
    if (Date.now() > deadline) throw new Error(`${dev} is still attached ${waitMs / 1000}s after losetup -d`)
    await sleep(200)
  }
}

async function loopAttached(dev: string): Promise<boolean> {
  const name = dev.replace(/^\/dev\//, '')
  return (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8').catch(() => '')) !== ''
}

export interface Loop {
  dev: string
  /** Detaches now (and drops the cleanup step). */
  detach(): Promise<void>
}

export async function attachLoop(file: string, cleanup: Cleanup): Promise<Loop> {
  const dev = (await must('losetup', ['--find', '--show', file])).trim()
  if (!dev.startsWith('/dev/loop')) throw new Error(`losetup gave no device for ${file}: ${JSON.stringify(dev)}`)
  const detach = cleanup.add(`losetup -d ${dev}`, () => detachLoop(dev))
  return { dev, detach }
}

/** Unmounts `path`, retrying while it is busy (a just-killed writer), lazily as a last resort. */
export async function unmount(path: string): Promise<void> {
  for (let i = 0; i < 20; i++) {
    if (!(await mountAt(path))) return
    const r = await run('umount', [path])
    if (r.code === 0) return
    await sleep(500)
  }
  if (await mountAt(path)) await must('umount', ['-l', path])
}

/** Mounts `dev` at `dir` and registers its unmount. */
export async function mountDev(dev: string, dir: string, cleanup: Cleanup): Promise<() => Promise<void>> {
  await must('mount', [dev, dir])
  return cleanup.add(`umount ${dir}`, () => unmount(dir))
}

export interface DiskUsage {
  /** `du -sb`: apparent bytes. */
  apparent: number
  /** `du -s -B1`: bytes of allocated blocks. */
  allocated: number
}

export async function du(path: string): Promise<DiskUsage> {
  const first = (out: string) => Number(out.trim().split(/\s+/)[0])
  // LevelDB deletes files during compaction: du may complain of a vanished file, which is harmless.
  const apparent = first((await run('du', ['-sb', path])).stdout)
  const allocated = first((await run('du', ['-s', '-B1', path])).stdout)
  if (!Number.isFinite(apparent) || !Number.isFinite(allocated)) throw new Error(`du ${path} gave no figure`)
  return { apparent, allocated }
}

/**
 * Waits (up to `maxMs`) until du of `path` stops changing — background
 * compaction — and returns the last figure and whether it settled.
 */
export async function duSettled(path: string, maxMs: number): Promise<{ usage: DiskUsage; settled: boolean; waitedMs: number }> {
  const t0 = Date.now()
  let last = await du(path)
  for (;;) {
    await sleep(2000)
    const now = await du(path)
    const waitedMs = Date.now() - t0
    if (Math.abs(now.allocated - last.allocated) <= Math.max(4096 * 16, last.allocated * 0.001)) return { usage: now, settled: true, waitedMs }
    if (waitedMs >= maxMs) return { usage: now, settled: false, waitedMs }
    last = now
  }
}
