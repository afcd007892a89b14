// How the CLI reports a failure: one line that says what is wrong and what to do.
export class UsageError extends Error {
  override name = 'UsageError';
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export function reportAndExit(err: unknown): never {
  const e = err as Error;
  const message = (e?.message ?? String(err)).trim().split('\n')[0];
  process.stderr.write(`hvprotect: ${message}\n`);
  if (process.env.HVPROTECT_DEBUG && e?.stack) process.stderr.write(`${e.stack}\n`);
  process.exit(err instanceof UsageError ? EXIT_USAGE : EXIT_FAILED);
}
