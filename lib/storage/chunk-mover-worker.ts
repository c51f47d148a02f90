/**
 * The migration worker thread: opens storage systems' stores by path (with
 * `multithreading: true`, as the main thread does) and runs chunk copies.
 * Messages: {type:'open', sid, path} | {type:'copy', id, req} |
 * {type:'close', sid, id} | {type:'exit'}. Replies: {id, bytes} | {id, error}.
 */
import { parentPort } from 'node:worker_threads'
import { ClassicLevel } from 'classic-level'
import { asVvfsError } from '../errors.js'
import { copyChunks, type CopyRequest } from './chunk-copy.js'
import { STORE_OPTIONS } from './storage-system.js'

type Message = { type: 'open'; sid: number; path: string } | { type: 'copy'; id: number; req: CopyRequest } | { type: 'close'; sid: number; id: number } | { type: 'exit' }

const stores = new Map<number, Promise<ClassicLevel<Buffer, Buffer>>>()

function store(sid: number): Promise<ClassicLevel<Buffer, Buffer>> {
  const s = stores.get(sid)
  if (!s) throw new Error(`storage system ${sid} is not open in the worker`)
  return s
}

parentPort!.on('message', (msg: Message) => {
  switch (msg.type) {
    case 'open': {
      const db = new ClassicLevel<Buffer, Buffer>(msg.path, { keyEncoding: 'buffer', valueEncoding: 'buffer', multithreading: true, createIfMissing: false, ...STORE_OPTIONS } as never)
      stores.set(
        msg.sid,
        db.open().then(() => db),
      )
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
