// Types for the parts of fuse-native (as patched in patches/) that vvfs uses.
declare module 'fuse-native' {
  type Cb = (err: number, ...rest: unknown[]) => void
  export interface Stat {
    mode: number
    uid: number
    gid: number
    size: number
    nlink?: number
    blocks?: number
    blksize?: number
    ino?: number
    atime: Date
    mtime: Date
    ctime: Date
  }
  export interface Statfs {
    bsize: number
    frsize: number
    blocks: number
    bfree: number
    bavail: number
    files: number
    ffree: number
    favail: number
    fsid: number
    flag: number
    namemax: number
  }
  export interface Ops {
    init?(cb: (err: number) => void): void
    statfs?(path: string, cb: (err: number, st?: Statfs) => void): void
    getattr?(path: string, cb: (err: number, st?: Stat) => void): void
    readdir?(path: string, cb: (err: number, names?: string[]) => void): void
    access?(path: string, mode: number, cb: (err: number) => void): void
    open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void
    create?(path: string, mode: number, cb: (err: number, fd?: number) => void): void
    release?(path: string, fd: number, cb: (err: number) => void): void
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (result: number) => void): void
    truncate?(path: string, size: number, cb: (err: number) => void): void
    ftruncate?(path: string, fd: number, size: number, cb: (err: number) => void): void
    fsync?(path: string, datasync: number, fd: number, cb: (err: number) => void): void
    flush?(path: string, fd: number, cb: (err: number) => void): void
    fallocate?(path: string, fd: number, mode: number, offset: number, length: number, cb: (err: number) => void): void
    getxattr?(path: string, name: string, position: number, cb: (err: number, value?: Buffer | null) => void): void
    listxattr?(path: string, cb: (err: number, names?: string[]) => void): void
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: (err: number) => void): void
    removexattr?(path: string, name: string, cb: (err: number) => void): void
    utimens?(path: string, atime: number, mtime: number, cb: (err: number) => void): void
    chmod?(path: string, mode: number, cb: (err: number) => void): void
    chown?(path: string, uid: number, gid: number, cb: (err: number) => void): void
    unlink?(path: string, cb: (err: number) => void): void
    rename?(src: string, dest: string, cb: (err: number) => void): void
    mkdir?(path: string, mode: number, cb: (err: number) => void): void
    rmdir?(path: string, cb: (err: number) => void): void
    [key: string]: ((...args: never[]) => void) | undefined
  }
  export interface Options {
    force?: boolean
    mkdir?: boolean
    /** The largest request the kernel sends (libfuse 3 negotiates it at init; big writes are always on). */
    maxWrite?: number
    maxRead?: number
    fsname?: string
    subtype?: string
    allowOther?: boolean
    defaultPermissions?: boolean
    attrTimeout?: number
    entryTimeout?: number
    debug?: boolean
    timeout?: number | false | Record<string, number | false>
  }
  class Fuse {
    constructor(mnt: string, ops: Ops, opts?: Options)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    static unmount(mnt: string, cb: (err: Error | null) => void): void
    /** patches/: the read cache served from the FUSE threads (fuse-native.c). */
    static readCache: {
      init(onServed: () => void): void
      publish(vol: number, start: number, data: Buffer, length: number): boolean
      withdraw(vol: number, start: number): void
      withdrawVolume(vol: number): void
      bind(fh: number, vol: number): void
      unbind(fh: number): void
      drain(into: Float64Array): number
      stats(): { served: number; unreported: number; published: number }
    }
    /** patches/: the libfuse the binding runs with (fuse_version(): 314 for 3.14). */
    static libfuseVersion(): number
    static ENOENT: number
  }
  export default Fuse
  export type { Cb }
}
