/**
 * The migration worker thread: opens local storage systems' LevelDB stores
 * by path (LevelChunkStore, with `multithreading: true` as on the main
 * thread, and the same identity check) and runs chunk copies between them.
 * Messages: {type:'open', sid, name, path} | {type:'copy', id, req} |
 * {type:'close', sid, id} | {type:'exit'}. Replies: {id, bytes} | {id, error}.
 */
import { parentPort } from 'node:worker_threads'
import { asVvfsError } from '../errors.js'
import { copyChunks, type CopyRequest } from './chunk-copy.js'
import { LevelChunkStore } from './level-store.js'

type Message =
  | { type: 'open'; sid: number; name: string; path: string }
  | { type: 'copy'; id: number; req: CopyRequest }
  | { type: 'close'; sid: number; id: number }
  | { type: 'exit' }

const stores = new Map<number, Promise<LevelChunkStore>>()

function store(sid: number): Promise<LevelChunkStore> {
  const s = stores.get(sid)
  if (!s) throw new Error(`storage system ${sid} is not open in the worker`)
  return s
}

parentPort!.on('message', (msg: Message) => {
  switch (msg.type) {
    case 'open': {
      const opened = LevelChunkStore.open({ sid: msg.sid, name: msg.name, path: msg.path, create: false })
      // A failed open is reported by the copies that wait for it.
      opened.catch(() => {})
      stores.set(msg.sid, opened)
      break
    }
    case 'copy': {
      const { id, req } = msg
      Promise.all([store(req.fromSid), store(req.toSid)])
        .then(([from, to]) => copyChunks(from, to, req.fromPcas, req.toPcas, req.style))
        .then(
          (bytes) => parentPort!.postMessage({ id, bytes }),
          (err) => parentPort!.postMessage({ id, error: asVvfsError(err, 'IO_ERROR').toWire() }),
        )
      break
    }
    case 'close': {
      const s = stores.get(msg.sid)
      stores.delete(msg.sid)
      const done = () => parentPort!.postMessage({ id: msg.id, bytes: 0 })
      if (!s) done()
      else void s.then((db) => db.close()).then(done, done)
      break
    }
    case 'exit': {
      void Promise.all([...stores.values()].map((s) => s.then((db) => db.close()).catch(() => {}))).then(() => process.exit(0))
      break
    }
  }
})
