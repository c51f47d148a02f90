// Applies our patches to fuse-native and classic-level and builds both from
// source (see patches/README.md for why). Runs as npm's postinstall, so every
// `npm ci` ends with the binaries vvfs needs; node-gyp-build loads
// build/Release before any prebuilt binary.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const bin = (name) => join(root, 'node_modules', '.bin', name)
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, stdio: 'inherit' })

run(bin('patch-package'), ['--error-on-fail'], root)

// Node's headers ship with Debian's nodejs; use them rather than downloading.
const gypArgs = ['rebuild', '-j', '2']
if (existsSync('/usr/include/node/node_api.h')) gypArgs.push('--nodedir=/usr')

for (const pkg of ['fuse-native', 'classic-level']) {
  const dir = join(root, 'node_modules', pkg)
  console.log(`vvfs: building ${pkg} from source`)
  try {
    execFileSync(bin('node-gyp'), gypArgs, { cwd: dir, stdio: 'pipe' })
  } catch (err) {
    // Compiler warnings are noise on success; on failure show everything.
    process.stderr.write(String(err.stdout ?? '') + String(err.stderr ?? ''))
    throw err
  }
}

// The power-cut interposer the tests load with LD_PRELOAD
// (native/powercut/powercut.c, test/helpers/powercut.ts): one C file, no
// node-gyp. The daemon never loads it.
const powercut = join(root, 'native', 'powercut')
console.log('vvfs: building native/powercut')
mkdirSync(join(powercut, 'build'), { recursive: true })
run('gcc', ['-shared', '-fPIC', '-O2', '-Wall', '-Wextra', '-Werror', '-o', join(powercut, 'build', 'powercut.so'), join(powercut, 'powercut.c'), '-ldl'], powercut)
// The control socket's peer-credential check (native/peercred: one N-API
// function around getsockopt SO_PEERCRED, which Node lacks). The daemon
// refuses to start without it.
run(bin('node-gyp'), gypArgs, join(root, 'native', 'peercred'))
// The catalog's cross-process commit lock (native/flock: flock(2), which
// Node lacks). The daemon refuses to start without it.
run(bin('node-gyp'), gypArgs, join(root, 'native', 'flock'))
// The allocator's settings (native/malloc: mallopt and malloc_trim, which
// Node lacks; lib/malloc-tuning.ts says why). The daemon and storage
// servers refuse to start without it.
run(bin('node-gyp'), gypArgs, join(root, 'native', 'malloc'))
