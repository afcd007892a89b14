// What stands in a plain-text search attribute whose value the payload codec would otherwise
// have sealed (safe to import from workflow code: no I/O).
export const ENCRYPTED_MARKER = '(encrypted)';

interface SearchAttributePayload {
  metadata?: Record<string, Uint8Array> | null;
  data?: Uint8Array | null;
}

/** Replaces the named Keyword search attributes' values in place with ENCRYPTED_MARKER. */
export function redactedSearchAttributePayloads(fields: Record<string, SearchAttributePayload>, names: string[]): void {
  for (const name of names) {
    const p = fields[name];
    if (!p) continue;
    p.data = new TextEncoder().encode(JSON.stringify(ENCRYPTED_MARKER));
  }
}
