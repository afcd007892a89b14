import { randomBytes } from 'node:crypto';

// A GUID on disk is Windows' mixed-endian layout: Data1 (u32 LE), Data2 (u16 LE),
// Data3 (u16 LE), Data4 (8 bytes as is). Strings are the registry form without braces, lower case.

export const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

export function readGuid(buf: Buffer, at: number): string {
  const h = (o: number, n: number) => buf.subarray(at + o, at + o + n).toString('hex');
  const le = (o: number, n: number) => Buffer.from(buf.subarray(at + o, at + o + n)).reverse().toString('hex');
  return `${le(0, 4)}-${le(4, 2)}-${le(6, 2)}-${h(8, 2)}-${h(10, 6)}`;
}

export function writeGuid(buf: Buffer, at: number, guid: string): void {
  const hex = normaliseGuid(guid).replace(/-/g, '');
  if (hex.length !== 32) throw new Error(`not a GUID: ${guid}`);
  const b = Buffer.from(hex, 'hex');
  buf.set(Buffer.from(b.subarray(0, 4)).reverse(), at);
  buf.set(Buffer.from(b.subarray(4, 6)).reverse(), at + 4);
  buf.set(Buffer.from(b.subarray(6, 8)).reverse(), at + 6);
  buf.set(b.subarray(8, 16), at + 8);
}

/** Accepts `{…}` or bare, any case; returns bare lower case, or '' when not a GUID. */
export function normaliseGuid(s: string): string {
  const m = /^\{?([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\}?$/.exec(s.trim());
  return m ? m[1]!.toLowerCase() : '';
}

/** A random (version 4) GUID. */
export function newGuid(): string {
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
