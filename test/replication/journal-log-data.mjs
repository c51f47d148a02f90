// The data of entry `seq` in journal-log-writer.mjs: 4 KiB saying its number.
export function dataOf(seq) {
  const b = Buffer.alloc(4096, seq % 251)
  b.writeUInt32BE(seq, 0)
  return b
}
