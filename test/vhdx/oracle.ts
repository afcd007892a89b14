// Test support: temporary folders, deterministic disk content and the outside oracles
// (qemu-img from qemu-utils, and libvhdi's Python binding pyvhdi).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { prng } from '../support/prng';

export const MiB = 1024 * 1024;

export function tempDir(name: string): { dir: string; file: (n: string) => string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), `hvp-vhdx-${name}-`));
  return { dir, file: (n) => path.join(dir, n), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** qemu-img's exit status and output without throwing (check returns non-zero on corruption). */
export function qemuImgStatus(...args: string[]): { status: number; out: string } {
  try {
    return { status: 0, out: execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) };
  } catch (e) {
    const err = e as { status: number; stdout: string; stderr: string };
    return { status: err.status, out: `${err.stdout}${err.stderr}` };
  }
}

export function qemuIo(file: string, ...cmds: string[]): void {
  execFileSync('qemu-io', ['-f', 'vhdx', ...cmds.flatMap((c) => ['-c', c]), file], { stdio: 'ignore' });
}

/** The disk's bytes as qemu-img sees them. */
export function qemuRaw(file: string, dir: string): Buffer {
  const out = path.join(dir, `qemu-raw-${path.basename(file)}.raw`);
  qemuImg('convert', '-f', 'vhdx', '-O', 'raw', file, out);
  const b = readFileSync(out);
  rmSync(out);
  return b;
}

/** The disk's bytes as libvhdi sees them; for a differencing disk every parent is handed over with set_parent. */
export function pyvhdiRaw(chain: string[], dir: string): Buffer {
  const out = path.join(dir, 'pyvhdi.raw');
  const script = `
import sys, pyvhdi
paths = sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(len(files) - 1):
    files[i].set_parent(files[i + 1])
f = files[0]
size = f.get_media_size()
with open(sys.argv[1], 'wb') as o:
    off = 0
    while off < size:
        n = min(4 * 1024 * 1024, size - off)
        o.write(f.read_buffer_at_offset(n, off))
        off += n
`;
  execFileSync('/usr/bin/python3', ['-c', script, out, ...chain], { stdio: ['ignore', 'ignore', 'pipe'] });
  const b = readFileSync(out);
  rmSync(out);
  return b;
}

/** Deterministic mixed content: runs of random-looking bytes, zeros and repeated patterns. */
export function mixedContent(size: number, seed: number, sparse = true): Buffer {
  const buf = Buffer.alloc(size);
  const rnd = prng(seed);
  let pos = 0;
  while (pos < size) {
    const len = Math.min(size - pos, (1 + (rnd() % 96)) * 16 * 1024);
    const kind = rnd() % (sparse ? 4 : 2);
    if (kind === 0) for (let i = pos; i < pos + len; i += 4) buf.writeUInt32LE(rnd(), i);
    else if (kind === 1) buf.fill(rnd() & 0xff, pos, pos + len);
    // kinds 2 and 3 stay zero
    pos += len;
  }
  return buf;
}

export function writeRaw(file: string, data: Buffer): void {
  writeFileSync(file, data);
}

/** First differing offset, for readable failures; -1 when equal. */
export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}
