import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // *.soak.test.ts run under `make soak` (VVFS_SOAK=1) only. The replication
    // prefix test is there while its open bug is (docs/replication.md, "Known
    // bug"): it failed one CI run in three, after a kill of both daemons.
    exclude: process.env.VVFS_SOAK ? ['node_modules/**'] : ['node_modules/**', 'test/**/*.soak.test.ts'],
    // FUSE mounts, loop devices and a 2-core machine: one file at a time.
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
})
