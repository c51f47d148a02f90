export const BLOCK: number
export function offsetOf(seq: number, blocks: number): number
export function blockOf(seq: number, blocks: number): Buffer
export function seqOfBlock(image: Buffer, index: number, blocks: number): number
