/**
 * WriteGenerations: what a store's sync must cover, counted in completed
 * writes rather than kept as a dirty flag. Used by StorageSystem (chunk
 * stores) and MapStore (the relay's records).
 *
 * The rule: a sync covers exactly the writes that had *completed* when it
 * began (LevelDB's sync write then syncs a log holding all of them), and a
 * caller's sync returns only after a sync that began after every write the
 * caller had seen complete. A flag cleared at the start of a sync lost a
 * write that was queued before the sync but entered LevelDB after it (the
 * thread-pool hand-off): the writer's own fsync then saw a clean store. A
 * second caller also returned at once while the first caller's sync was
 * still running (a sync write delayed 200 ms: the second fsync returned at
 * +20 ms).
 *
 * Concurrency: one sync runs at a time; a caller whose writes the running
 * one covers waits for it (and sees its error); any other caller waits for it
 * to end, then the first of them starts the next one, which covers the rest.
 */
export class WriteGenerations {
  /** Writes completed so far (the generation of the newest one). */
  private completed = 0
  /** Every write up to this generation is durable. */
  private durableUpTo = 0
  private running: { covers: number; done: Promise<void> } | null = null

  /** Notes a completed write and returns its generation. */
  complete(): number {
    return ++this.completed
  }

  /** The newest completed write. */
  get newest(): number {
    return this.completed
  }

  /** Every write up to this generation is durable. */
  get durable(): number {
    return this.durableUpTo
  }

  /**
   * A sync run outside `sync` (one that also syncs these writes, e.g. a
   * storage system's full sync covering its logged writes) made every write
   * up to `upTo` durable.
   */
  noteDurable(upTo: number): void {
    if (upTo > this.durableUpTo) this.durableUpTo = upTo
  }

  /** Whether a completed write is not yet covered by a finished sync. */
  get pending(): boolean {
    return this.completed > this.durableUpTo
  }

  /**
   * Makes every write completed before this call durable, by `run` (which
   * gets the generations its run covers: those after `durable`, up to
   * `covers`) unless a sync that covers them is already running.
   */
  async sync(run: (covers: number) => Promise<void>): Promise<void> {
    const target = this.completed
    while (this.durableUpTo < target) {
      const r = this.running
      if (r) {
        if (r.covers >= target) return r.done
        await r.done.catch(() => {})
        continue
      }
      const covers = this.completed
      const entry = {
        covers,
        done: run(covers).then(() => {
          if (covers > this.durableUpTo) this.durableUpTo = covers
        }),
      }
      this.running = entry
      const forget = () => {
        if (this.running === entry) this.running = null
      }
      entry.done.then(forget, forget)
      return entry.done
    }
  }
}
