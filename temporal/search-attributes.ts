// Custom search attributes that make the Web UI answer "what is being backed up, where, how"
// without opening payloads. Registered at start-up, idempotently: on a fresh dev server
// `--search-attribute` would do, but on an existing database (or a real cluster) only the
// operator API adds them.
import { SearchAttributeType } from '@temporalio/common';
import { SA } from './search-attribute-keys';

export { SA };
import type { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

export const SEARCH_ATTRIBUTE_NAMES = Object.values(SA).map((k) => k.name);

const INDEXED = temporal.api.enums.v1.IndexedValueType;
const SA_INDEXED_TYPE: Record<string, temporal.api.enums.v1.IndexedValueType> = {
  [SearchAttributeType.KEYWORD]: INDEXED.INDEXED_VALUE_TYPE_KEYWORD,
  [SearchAttributeType.TEXT]: INDEXED.INDEXED_VALUE_TYPE_TEXT,
  [SearchAttributeType.INT]: INDEXED.INDEXED_VALUE_TYPE_INT,
  [SearchAttributeType.DOUBLE]: INDEXED.INDEXED_VALUE_TYPE_DOUBLE,
  [SearchAttributeType.BOOL]: INDEXED.INDEXED_VALUE_TYPE_BOOL,
  [SearchAttributeType.DATETIME]: INDEXED.INDEXED_VALUE_TYPE_DATETIME,
  [SearchAttributeType.KEYWORD_LIST]: INDEXED.INDEXED_VALUE_TYPE_KEYWORD_LIST,
};

/** `--search-attribute` flags for `temporal server start-dev` (fresh databases). */
export function devServerSearchAttributeFlags(): string[] {
  const typeName: Record<string, string> = { [SearchAttributeType.KEYWORD]: 'Keyword' };
  return Object.values(SA).flatMap((k) => ['--search-attribute', `${k.name}=${typeName[k.type]}`]);
}

/**
 * Adds the missing ones and waits until all are listed. Safe to call from several processes
 * at once: "already exists" from a racing caller counts as success.
 */
export async function registerSearchAttributes(
  connection: Connection,
  namespace: string,
  opts: { timeoutMs?: number } = {},
): Promise<{ added: string[] }> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  const listed = async () =>
    Object.keys((await connection.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {});
  const present = new Set(await listed());
  const missing = Object.values(SA).filter((k) => !present.has(k.name));
  if (missing.length > 0) {
    try {
      await connection.operatorService.addSearchAttributes({
        namespace,
        searchAttributes: Object.fromEntries(missing.map((k) => [k.name, SA_INDEXED_TYPE[k.type]])),
      });
    } catch (err) {
      if (!/already exist/i.test((err as Error).message)) throw err;
    }
  }
  for (;;) {
    const now = new Set(await listed());
    if (SEARCH_ATTRIBUTE_NAMES.every((n) => now.has(n))) break;
    if (Date.now() > deadline) {
      throw new Error(
        `search attributes ${SEARCH_ATTRIBUTE_NAMES.filter((n) => !now.has(n)).join(', ')} ` +
          `are still not registered in namespace ${namespace}; check the server's visibility store`,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return { added: missing.map((k) => k.name) };
}
