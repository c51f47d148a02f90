/** The stable code of what a call threw ('no error' if it did not): what tests assert on. */
export async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p)
  } catch (err) {
    return (err as { code?: string }).code ?? String(err)
  }
  return 'no error'
}
