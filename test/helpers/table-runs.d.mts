export interface TableRun {
  first: number
  chunks: number
}
export const TABLE_RUNS: TableRun[]
export function tableRunData(run: TableRun): Buffer
