/** Host I/O on a volume file as a test's writer does it: write + fsync + close, reporting the errno instead of throwing. */
import { closeSync, constants, fsyncSync, openSync, writeSync } from 'node:fs'
import { open } from 'node:fs/promises'

export function errnoOf(fn: () => void): string | undefined {
  try {
    fn()
    return undefined
  } catch (err) {
    return (err as NodeJS.ErrnoException).code
  }
}

/**
 * Writes `data` at `offset`, fsyncs and closes; the first errno code if any step failed (close flushes too).
 * The file is closed after a failure too: a descriptor left open kept the volume file open in the daemon, whose
 * stop then waited out its unmount grace for it.
 */
export function writeSynced(file: string, offset: number, data: Buffer): string | undefined {
  const fd = openSync(file, constants.O_RDWR)
  const failed = errnoOf(() => {
    writeSync(fd, data, 0, data.length, offset)
    fsyncSync(fd)
  })
  const closed = errnoOf(() => closeSync(fd))
  return failed ?? closed
}

/** Writes `data` at `offset`, fsyncs and closes without blocking the test's event loop; throws what failed. */
export async function writeAndFsync(file: string, data: Buffer, offset: number): Promise<void> {
  const fh = await open(file, 'r+')
  try {
    await fh.write(data, 0, data.length, offset)
    await fh.sync()
  } finally {
    await fh.close()
  }
}
