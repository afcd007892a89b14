// Benchmark: the index patch of an express full. 1% of a 4 GiB disk changed in scattered writes
// is ~650 slots of 256 KiB, ~25 slots apart, sent as 64-slot patches (one per 16 MiB batch of the
// ingest pipeline). `IndexBuilder.patch` (repository/fixed-index.ts) reads and writes each run of
// neighbouring slots as one span; the peer in the same run is what it did before 2 Dec for
// scattered slots: a read and a write per slot on the same file. Writes bench/index-patch.md.
//
//   npm run -s build && node dist/bench/index-patch.js [--rounds 7]
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DIGEST_SIZE, INDEX_HEADER_SIZE, IndexBuilder } from '../repository/fixed-index';
import { median } from './support';

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const ROUNDS = Number(opt('rounds', '7'));
const DISK = 4 * 1024 ** 3;
const CHUNK = 256 * 1024;
const CHANGED = 655;
const PER_PATCH = 64;

/** The peer: one read and one write of 32 bytes per slot (the old scattered path). */
async function patchSlotBySlot(file: string, slots: number[], digests: Buffer): Promise<Buffer> {
  const previous = Buffer.alloc(slots.length * DIGEST_SIZE);
  const fh = await fs.open(file, 'r+');
  try {
    for (let i = 0; i < slots.length; i++) {
      const pos = INDEX_HEADER_SIZE + slots[i] * DIGEST_SIZE;
      await fh.read(previous, i * DIGEST_SIZE, DIGEST_SIZE, pos);
      await fh.write(digests, i * DIGEST_SIZE, DIGEST_SIZE, pos);
    }
  } finally {
    await fh.close();
  }
  return previous;
}

async function main(): Promise<void> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'hvp-index-patch-'));
  const spans: Array<{ ms: number; cpu: number }> = [];
  const bySlot: Array<{ ms: number; cpu: number }> = [];
  try {
    for (let r = 0; r < ROUNDS; r++) {
      const slotsAll = Array.from({ length: CHANGED }, () => Math.floor(Math.random() * (DISK / CHUNK))).sort((a, b) => a - b);
      const patches = [];
      for (let i = 0; i < slotsAll.length; i += PER_PATCH) {
        const slots = slotsAll.slice(i, i + PER_PATCH);
        patches.push({ slots, digests: randomBytes(slots.length * DIGEST_SIZE) });
      }
      // Alternate which goes first.
      const order = r % 2 === 0 ? (['span', 'slot'] as const) : (['slot', 'span'] as const);
      for (const which of order) {
        const b = await IndexBuilder.createEmpty(path.join(dir, `${which}-${r}.fidx`), DISK, CHUNK);
        const cpu0 = process.cpuUsage();
        const t0 = performance.now();
        for (const p of patches) {
          if (which === 'span') await b.patch(p.slots, p.digests);
          else await patchSlotBySlot(path.join(dir, `${which}-${r}.fidx`), p.slots, p.digests);
        }
        const ms = performance.now() - t0;
        const c = process.cpuUsage(cpu0);
        (which === 'span' ? spans : bySlot).push({ ms, cpu: (c.user + c.system) / 1000 });
      }
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  const fmt = (xs: number[]) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;
  const md = [
    '# Index patch benchmark',
    '',
    `Run ${new Date().toISOString()} by \`node dist/bench/index-patch.js\` (${ROUNDS} rounds, order alternating). ${CHANGED} random slots of a ${DISK / 1024 ** 3} GiB disk in ${CHUNK / 1024} KiB chunks (1% changed), sent as ${PER_PATCH}-slot patches in slot order, to a fresh index each.`,
    '',
    '| | wall ms, median (range) | process CPU ms, median (range) |',
    '| --- | ---: | ---: |',
    `| \`IndexBuilder.patch\` (runs of slots as one span) | ${fmt(spans.map((s) => s.ms))} | ${fmt(spans.map((s) => s.cpu))} |`,
    `| one read and one write per slot (before 2 Dec) | ${fmt(bySlot.map((s) => s.ms))} | ${fmt(bySlot.map((s) => s.cpu))} |`,
    '',
    `Machine: ${os.cpus().length} cores, Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} at the end; temp files under ${os.tmpdir()}.`,
    '',
  ].join('\n');
  await fs.writeFile(path.join(__dirname, '..', '..', 'bench', 'index-patch.md'), md);
  process.stdout.write(md);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
