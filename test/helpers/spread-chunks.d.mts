export const STEPS: number
export const RUN: number
export function spreadChunk(pca: number, v: number): Buffer
export function spreadChunks(v: number): { pca: number; data: Buffer }[]
