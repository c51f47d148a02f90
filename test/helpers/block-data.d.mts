export function blockData(id: number, length: number): Buffer
