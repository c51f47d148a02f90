/**
 * Runs in every test file (vitest setupFiles): once the file's own hooks
 * are done, whatever its tests left — daemons, mounts, loop devices and the
 * directories made with tempDir — goes, so a test that forgot (or failed
 * before its cleanup) leaves nothing in /tmp.
 */
import { afterAll } from 'vitest'
import { removeTempDirs } from './helpers/daemon.js'

afterAll(removeTempDirs)
