/**
 * Shell completion as bash runs it: `vvfs completion` prints a script whose
 * function calls `vvfs --get-yargs-completions <words…>`; names complete from
 * the running daemon, and from a daemon that is not there, silently nothing.
 */
import { spawnSync } from 'node:child_process'
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { daemonForFile } from '../helpers/cli.js'
import { VVFS } from '../helpers/daemon.js'

const { daemon } = daemonForFile()

beforeAll(async () => {
  const c = daemon().client
  await c.call('storage.add', { name: 'ssd', capacity: '256M' })
  await c.call('storage.add', { name: 'hdd', capacity: '256M' })
  await c.call('host.add', { name: 'web', mount: join(daemon().dir, 'web') })
  for (const name of ['db', 'dbx', 'logs']) await c.call('volume.create', { name, size: '16M' })
  await c.call('migrate.start', { volume: 'logs', to: 'hdd' })
})

/** What bash gets back for the line `words` (the last one being typed), as the script asks for it. */
function complete(words: string[], socket = daemon().socket) {
  const r = spawnSync(process.execPath, [VVFS, '--get-yargs-completions', 'vvfs', ...words], { encoding: 'utf8', env: { ...process.env, VVFS_SOCKET: socket } })
  return { code: r.status, list: r.stdout.split('\n').filter(Boolean), err: r.stderr }
}

describe('vvfs completion', () => {
  it('completes volume, storage system, host and job names from the daemon, and runs no command', async () => {
    expect(complete(['volume', 'delete', '']).list).toEqual(['db', 'dbx', 'logs'])
    expect(complete(['volume', 'show', 'd']).list).toEqual(['db', 'dbx'])
    expect(complete(['volume', 'resize', '--json', '']).list).toEqual(['db', 'dbx', 'logs'])
    expect(complete(['migrate', 'db', '--to', '']).list.sort()).toEqual(['hdd', 'ssd'])
    expect(complete(['volume', 'map', 'db', '--host', '']).list.sort()).toEqual(['local', 'web'])
    expect(complete(['storage', 'remove', 's']).list).toEqual(['ssd'])
    expect(complete(['host', 'remove', '']).list.sort()).toEqual(['local', 'web'])
    expect(complete(['job', 'cancel', '']).list).toEqual(['1'])
    expect(complete(['migrate', '']).list).toEqual(['db', 'dbx', 'logs', 'plan', 'policy', 'rollback'])
    // A TAB after `volume delete` deleted nothing.
    expect((await daemon().client.call('volume.list', {})).volumes.map((v) => v.name)).toEqual(['db', 'dbx', 'logs'])
  })

  it('completes commands and options where no name is expected, and runs no command', async () => {
    expect(complete(['']).list).toEqual(expect.arrayContaining(['volume', 'storage', 'host', 'job', 'completion']))
    expect(complete(['volume', '']).list).toEqual(expect.arrayContaining(['create', 'delete', 'show']))
    expect(complete(['volume', 'show', '--']).list).toEqual(expect.arrayContaining(['--json', '--extents']))
    // The second positional of map-of is an offset, not a name.
    expect(complete(['volume', 'map-of', 'db', '']).list).not.toContain('db')
    // A TAB on a complete `volume create` line created nothing.
    expect(complete(['volume', 'create', 'newvol', '--size', '1M', '']).code).toBe(0)
    expect((await daemon().client.call('volume.list', {})).volumes.map((v) => v.name)).not.toContain('newvol')
  })

  it('completes nothing, silently, when the daemon is not running', () => {
    const r = complete(['volume', 'delete', ''], join(daemon().dir, 'nobody.sock'))
    expect(r).toEqual({ code: 0, list: [], err: '' })
  })

  it('reads --socket from the line being completed', () => {
    expect(complete(['--socket', daemon().socket, 'volume', 'delete', 'l'], join(daemon().dir, 'nobody.sock')).list).toEqual(['logs'])
  })

  it('prints a bash script whose completion function answers with the daemon names', () => {
    const script = spawnSync(process.execPath, [VVFS, 'completion'], { encoding: 'utf8', env: { ...process.env, SHELL: '/bin/bash' } })
    expect(script.status).toBe(0)
    expect(script.stdout).toContain('complete -o bashdefault -o default -F _vvfs_yargs_completions vvfs')
    // bash runs `vvfs` from PATH: a wrapper for the built one.
    const bin = join(daemon().dir, 'bin')
    spawnSync('mkdir', ['-p', bin])
    writeFileSync(join(bin, 'vvfs'), `#!/bin/sh\nexec ${process.execPath} ${VVFS} "$@"\n`)
    chmodSync(join(bin, 'vvfs'), 0o755)
    writeFileSync(join(daemon().dir, 'completion.bash'), script.stdout)
    const bash = spawnSync(
      'bash',
      ['-c', `source ${daemon().dir}/completion.bash; COMP_WORDS=(vvfs volume delete d); COMP_CWORD=3; _vvfs_yargs_completions; printf '%s\\n' "\${COMPREPLY[@]}"`],
      { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, VVFS_SOCKET: daemon().socket } },
    )
    expect(bash.stderr).toBe('')
    expect(bash.stdout.split('\n').filter(Boolean)).toEqual(['db', 'dbx'])
  })

  it('prints a zsh script under zsh', () => {
    const r = spawnSync(process.execPath, [VVFS, 'completion'], { encoding: 'utf8', env: { ...process.env, SHELL: '/usr/bin/zsh' } })
    expect(r.stdout).toMatch(/^#compdef vvfs/)
  })
})
