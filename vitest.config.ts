import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // *.soak.test.ts run under `make soak` (VVFS_SOAK=1) only: long counts
    // that do not fit make test's 30 minutes.
    exclude: process.env.VVFS_SOAK ? ['node_modules/**'] : ['node_modules/**', 'test/**/*.soak.test.ts'],
    // FUSE mounts, loop devices and a 2-core machine: one file at a time.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: ['default'],
    // Removes what a test file left behind (daemons, mounts, its temp dirs).
    setupFiles: ['test/setup.ts'],
  },
})
