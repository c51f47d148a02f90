export function dataOf(seq: number): Buffer
