import * as path from 'node:path';
import { readGuid, writeGuid } from './guid';
import { VhdxFile } from './file';

// Parent Locator metadata item (differencing disks):
//   0  LocatorType    GUID  B04AEFB7-D19E-4A81-B789-25B8E9445913 for a VHDX parent
//   16 Reserved       u16
//   18 KeyValueCount  u16
//   20 entries of 12 bytes: KeyOffset u32, ValueOffset u32, KeyLength u16, ValueLength u16
//      (offsets from the start of the item; keys and values are UTF-16LE without terminator)
// Keys: parent_linkage (the parent's DataWriteGuid, "{…}"), parent_linkage2 (an alternative
// accepted value), relative_path, volume_path, absolute_win32_path.

export const VHDX_LOCATOR_TYPE = 'b04aefb7-d19e-4a81-b789-25b8e9445913';

export type ParentLocator = Map<string, string>;

export function decodeParentLocator(file: VhdxFile, buf: Buffer): ParentLocator {
  if (buf.length < 20) file.fail('parent locator is shorter than its 20-byte header');
  const type = readGuid(buf, 0);
  if (type !== VHDX_LOCATOR_TYPE) file.fail(`parent locator type ${type} is not the VHDX locator type`);
  const count = buf.readUInt16LE(18);
  if (20 + count * 12 > buf.length) file.fail(`parent locator claims ${count} entries, more than its ${buf.length} bytes hold`);
  const out: ParentLocator = new Map();
  for (let i = 0; i < count; i++) {
    const e = 20 + i * 12;
    const ko = buf.readUInt32LE(e);
    const vo = buf.readUInt32LE(e + 4);
    const kl = buf.readUInt16LE(e + 8);
    const vl = buf.readUInt16LE(e + 10);
    if (ko + kl > buf.length || vo + vl > buf.length || kl === 0 || kl % 2 || vl % 2) {
      file.fail(`parent locator entry ${i} points outside the locator`);
    }
    out.set(buf.toString('utf16le', ko, ko + kl), buf.toString('utf16le', vo, vo + vl));
  }
  return out;
}

export function encodeParentLocator(entries: [string, string][]): Buffer {
  const parts: Buffer[] = [];
  const header = Buffer.alloc(20 + entries.length * 12);
  writeGuid(header, 0, VHDX_LOCATOR_TYPE);
  header.writeUInt16LE(entries.length, 18);
  let at = header.length;
  entries.forEach(([k, v], i) => {
    const kb = Buffer.from(k, 'utf16le');
    const vb = Buffer.from(v, 'utf16le');
    const e = 20 + i * 12;
    header.writeUInt32LE(at, e);
    header.writeUInt32LE(at + kb.length, e + 4);
    header.writeUInt16LE(kb.length, e + 8);
    header.writeUInt16LE(vb.length, e + 10);
    parts.push(kb, vb);
    at += kb.length + vb.length;
  });
  return Buffer.concat([header, ...parts]);
}

/** Locator entries for a child of `parentPath` whose DataWriteGuid is `linkage`. */
export function locatorEntriesFor(childPath: string, parentPath: string, linkage: string, linkage2?: string): [string, string][] {
  const rel = path.relative(path.dirname(path.resolve(childPath)), path.resolve(parentPath));
  // Windows writes backslashes and a leading ".\" for a sibling; we do the same and accept both on read.
  const relWin = (rel.startsWith('..') ? rel : `.${path.sep}${rel}`).split(path.sep).join('\\');
  const e: [string, string][] = [['parent_linkage', `{${linkage}}`]];
  if (linkage2) e.push(['parent_linkage2', `{${linkage2}}`]);
  e.push(['relative_path', relWin], ['absolute_win32_path', path.resolve(parentPath).split(path.sep).join('\\')]);
  return e;
}

/** Candidate parent paths in the order the format asks: relative to the child first, then absolute. */
export function parentCandidates(childPath: string, loc: ParentLocator): string[] {
  const out: string[] = [];
  const dir = path.dirname(path.resolve(childPath));
  const toPosix = (p: string) => p.replace(/\\/g, '/');
  const rel = loc.get('relative_path');
  if (rel) out.push(path.resolve(dir, toPosix(rel)));
  for (const key of ['absolute_win32_path', 'volume_path']) {
    const v = loc.get(key);
    if (!v) continue;
    const p = toPosix(v);
    // A drive-letter or volume path cannot exist on this host; still try it as written.
    out.push(p.startsWith('/') ? p : path.resolve(dir, p));
  }
  return [...new Set(out)];
}
