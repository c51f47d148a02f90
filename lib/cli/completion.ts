/**
 * Shell completion: `vvfs completion` prints a bash (or, under zsh, a zsh)
 * script that calls `vvfs --get-yargs-completions <words…>` on every TAB.
 * yargs completes commands and options; this adds the names the daemon
 * knows where one is expected — volumes, storage systems, hosts, job ids —
 * e.g. `vvfs volume delete <TAB>` or `vvfs migrate db --to <TAB>`.
 *
 * Failure mode: a daemon that is not running, or not answering within
 * NAMES_TIMEOUT_MS, adds nothing and prints nothing (a TAB must never print
 * an error into the command line being edited).
 */
import { ControlClient } from '../control/client.js'

type NameKind = 'volume' | 'storage' | 'host' | 'job'

/** Command paths whose first positional is a name of that kind. */
const NAME_POSITIONALS: Record<string, NameKind> = {
  'volume show': 'volume',
  'volume resize': 'volume',
  'volume delete': 'volume',
  'volume reclaim': 'volume',
  'volume map-of': 'volume',
  'volume map': 'volume',
  'volume unmap': 'volume',
  migrate: 'volume',
  'migrate rollback': 'job',
  'storage drain': 'storage',
  'storage undrain': 'storage',
  'storage remove': 'storage',
  'storage compact': 'storage',
  'host remove': 'host',
  'job show': 'job',
  'job wait': 'job',
  'job pause': 'job',
  'job resume': 'job',
  'job cancel': 'job',
}

/** What `vvfs migrate` takes besides a volume name. */
const MIGRATE_SUBCOMMANDS = ['plan', 'policy', 'rollback']

/** Options whose value is a name. */
const NAME_OPTIONS: Record<string, NameKind> = { '--host': 'host', '--to': 'storage' }

/** Options that take no value (every other option consumes the next word). */
const FLAGS = new Set(['--json', '--extents', '--wait', '--reserve', '--dry-run', '--force', '--demo', '--watch', '--help', '--version'])

/** A TAB waits at most this long for the daemon (a local socket answers in ~1 ms; a human notices ~100 ms). */
const NAMES_TIMEOUT_MS = 300

/**
 * What kind of name the word being completed is, from the words before it
 * (the command line without the program name): after a name option, or as
 * the first positional of a command that takes one.
 */
export function nameWanted(before: string[]): NameKind | undefined {
  const previous = before[before.length - 1]
  if (previous !== undefined && NAME_OPTIONS[previous]) return NAME_OPTIONS[previous]
  const positionals: string[] = []
  for (let i = 0; i < before.length; i++) {
    const w = before[i]!
    if (!w.startsWith('-')) positionals.push(w)
    else if (!FLAGS.has(w) && !w.includes('=')) i++ // the option's value
  }
  return NAME_POSITIONALS[positionals.join(' ')]
}

/** The --socket given on the command line being completed, if any. */
export function socketOnLine(words: string[]): string | undefined {
  for (let i = 0; i < words.length; i++) {
    if (words[i] === '--socket') return words[i + 1]
    if (words[i]!.startsWith('--socket=')) return words[i]!.slice('--socket='.length)
  }
  return undefined
}

async function fetchNames(client: ControlClient, kind: NameKind): Promise<string[]> {
  switch (kind) {
    case 'volume':
      return (await client.call('volume.list', {})).volumes.map((v) => v.name)
    case 'storage':
      return (await client.call('storage.list', {})).storage.map((s) => s.name)
    case 'host':
      return (await client.call('host.list', {})).hosts.map((h) => h.name)
    case 'job':
      return (await client.call('job.list', {})).jobs.map((j) => String(j.id))
  }
}

/** The names of that kind the daemon knows; none when it cannot be reached in time. */
export async function daemonNames(socket: string, kind: NameKind): Promise<string[]> {
  let client: ControlClient | undefined
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<string[]>((resolve) => (timer = setTimeout(() => resolve([]), NAMES_TIMEOUT_MS)))
  let settled = false
  const names = (async () => {
    client = await ControlClient.connect(socket)
    if (settled) client.close()
    return fetchNames(client, kind)
  })().catch(() => [] as string[])
  try {
    return await Promise.race([names, timeout])
  } finally {
    settled = true
    clearTimeout(timer)
    client?.close()
  }
}

/** The option the completion script calls `vvfs` with, followed by the words of the line. */
export const COMPLETION_KEY = '--get-yargs-completions'

/**
 * Names from the daemon for the word being typed, when a name is expected
 * there (and the word is not an option); undefined: leave it to yargs
 * (commands, options). `line` is what the shell passes after COMPLETION_KEY:
 * the program name, the words before, the word being typed.
 *
 * This runs before yargs: yargs' asynchronous completion hook lets the
 * parse go on and run the command's handler (`volume delete` on TAB, seen
 * with yargs 18.2), so a name lookup must not go through it.
 */
export async function namesToComplete(line: string[], defaultSocket: string): Promise<string[] | undefined> {
  const words = line.slice(1)
  const current = words[words.length - 1] ?? ''
  const kind = current.startsWith('-') ? undefined : nameWanted(words.slice(0, -1))
  if (!kind) return undefined
  const names = await daemonNames(socketOnLine(words) ?? defaultSocket, kind)
  // `vvfs migrate <TAB>`: a volume, or one of migrate's subcommands (lib/cli/jobs.ts).
  if (words.length === 2 && words[0] === 'migrate') names.push(...MIGRATE_SUBCOMMANDS)
  return names.filter((n) => n.startsWith(current))
}
