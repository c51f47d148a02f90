/** `length` bytes determined by `seed` (32 hex digits). */
export function contentOf(seed: string, length: number): Buffer
