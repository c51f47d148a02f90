/**
 * Finds and loads one of vvfs's own native addons (native/NAME, built by
 * scripts/build-native.mjs at `npm ci`): from lib/ when tests run the
 * sources, from dist/lib/ when the daemon runs the build — the first
 * native/NAME/build/Release/NAME.node above this file wins.
 *
 * Owns: nothing (Node caches what require loads). Failure: NOT_SUPPORTED,
 * naming what the addon is for, when it is not built.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { VvfsError } from './errors.js'

export function loadNativeAddon<T>(name: string, purpose: string): T {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'native', name, 'build', 'Release', `${name}.node`)
    if (existsSync(file)) return createRequire(import.meta.url)(file) as T
    if (dirname(dir) === dir) break
  }
  throw new VvfsError('NOT_SUPPORTED', `${purpose} native/${name} is not built (run node scripts/build-native.mjs)`)
}
