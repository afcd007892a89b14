// How the CLI reports a failure: one line that says what is wrong and what to do.
export class UsageError extends Error {
  override name = 'UsageError';
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** Network errors from node say the syscall, not what to do about it. */
function explain(err: Error & { code?: string; address?: string; port?: number }): string | undefined {
  const where = err.address ? `${err.address}${err.port ? `:${err.port}` : ''}` : 'the protection server';
  if (err.code === 'ECONNREFUSED') {
    return `cannot connect to ${where} (connection refused): is \`hvprotect server\` running there? Point the CLI at it with --storage-url or HVPROTECT_SERVER_DIR`;
  }
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return `cannot resolve the host of ${where}: check --storage-url`;
  if (err.code === 'ETIMEDOUT') return `no answer from ${where} (timed out): check --storage-url and the network`;
  return undefined;
}

export function reportAndExit(err: unknown): never {
  const e = err as Error;
  const message = (explain(e ?? {}) ?? e?.message ?? String(err)).trim().split('\n')[0];
  process.stderr.write(`hvprotect: ${message}\n`);
  if (process.env.HVPROTECT_DEBUG && e?.stack) process.stderr.write(`${e.stack}\n`);
  process.exit(err instanceof UsageError ? EXIT_USAGE : EXIT_FAILED);
}
