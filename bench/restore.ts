// Benchmark: whole-disk restore of a raw VM disk image (4 GiB, 2.8 GiB of data) out of the
// hvprotect repository, side by side with `restic restore`, `borg extract` and `cp` of the image,
// in one run on one machine. The same image is backed up by each tool first (not timed).
//
//   npx tsc -p . && node dist/bench/restore.js [--size-gib 4] [--rounds 1] [--in-flight 64] [--keep]
//
// hvprotect = the agent's restore data path (recovery's PointDiskReader over the storage API's
// batched chunk read, each chunk decompressed and hashed against its digest on the agent's worker
// threads, restorePointDisk writing a sparse raw file) in a
// process of its own, against the protection server's storage API in another, over loopback.
// Writes bench/restore.md. Temp data lives under /tmp and is removed.
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { forkChild, median, prng, timed } from './support';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const SIZE = Math.round(Number(opt('size-gib', '4')) * 1024 ** 3);
const BLOCK = 1024 * 1024;
const mib = (b: number) => (b / BLOCK).toFixed(0);
const sec = (ms: number) => (ms / 1000).toFixed(1);

/** 1 MiB blocks, shuffled: 40% random, 30% text, 30% never written (a hole). */
async function makeImage(file: string): Promise<number> {
  const rnd = prng(14);
  const text = Buffer.alloc(BLOCK);
  const words = ['disk ', 'point ', 'chunk ', 'guest ', 'volume ', 'backup ', 'restore\n'];
  for (let o = 0; o < BLOCK; ) o += text.write(words[rnd() % words.length], o);
  const fh = await fs.open(file, 'w');
  await fh.truncate(SIZE);
  const buf = Buffer.alloc(BLOCK);
  let data = 0;
  for (let b = 0; b < SIZE / BLOCK; b++) {
    const k = rnd() % 10;
    if (k < 3) continue;
    if (k < 7) randomFillSync(buf);
    else {
      text.copy(buf);
      buf.writeUInt32LE(b, 0); // no two text blocks alike
    }
    await fh.write(buf, 0, BLOCK, b * BLOCK);
    data += BLOCK;
  }
  await fh.close();
  return data;
}

/** Reads every file under `p` once: each tool restores from a repository in the page cache. */
function warm(p: string): void {
  execFileSync('sh', ['-c', `find "${p}" -type f -print0 | xargs -0 cat > /dev/null`]);
}

async function main(): Promise<void> {
  const rounds = Number(opt('rounds', '1'));
  const inFlight = Number(opt('in-flight', '64'));
  const tmp = await fs.mkdtemp(path.join('/tmp', 'hvp-bench-restore-'));
  const ingestScript = path.join(__dirname, 'repository-ingest-child.js');
  const srv = forkChild(ingestScript, ['server', path.join(tmp, 'hvprotect-repo'), String(256 * 1024)]);
  try {
    const image = path.join(tmp, 'disk.raw');
    const out = path.join(tmp, 'out');
    console.log(`generating a ${mib(SIZE)} MiB image in ${tmp}`);
    const dataBytes = await makeImage(image);
    const { url, token } = (await srv.next()) as { url: string; token: string };
    const ag = forkChild(ingestScript, ['agent', url, token, image, '-', '-']);
    const { pointId } = (await ag.next()) as { pointId: string };
    const resticEnv = { ...process.env, RESTIC_REPOSITORY: path.join(tmp, 'restic-repo'), RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(tmp, 'restic-cache') };
    execFileSync('restic', ['init', '--repository-version', '2'], { env: resticEnv, stdio: 'ignore' });
    execFileSync('restic', ['backup', '--quiet', '--host', 'bench', image], { env: resticEnv, stdio: 'ignore' });
    const borgEnv = { ...process.env, BORG_REPO: path.join(tmp, 'borg-repo'), BORG_BASE_DIR: path.join(tmp, 'borg-base'), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes' };
    execFileSync('borg', ['init', '--encryption', 'none'], { env: borgEnv, stdio: 'ignore' });
    execFileSync('borg', ['create', '--compression', 'lz4', '::disk', image], { env: borgEnv, stdio: 'ignore' });
    console.log('backed up with hvprotect, restic and borg');

    const tools = ['hvprotect', 'hvprotect-per-chunk', 'restic', 'borg', 'cp'] as const;
    const restored: Record<(typeof tools)[number], string> = {
      hvprotect: path.join(out, 'disk.raw'),
      'hvprotect-per-chunk': path.join(out, 'disk.raw'),
      restic: path.join(out, image), // restic restores the full path under --target
      borg: path.join(out, image.slice(1)), // borg extracts the path without its leading /
      cp: path.join(out, 'disk.raw'),
    };
    const runs = new Map<string, Array<{ wallMs: number; maxRssMiB: number; toDiskMs: number }>>();
    for (let round = 0; round < rounds; round++) {
      const order = [...tools.slice(round % tools.length), ...tools.slice(0, round % tools.length)];
      for (const t of order) {
        await fs.rm(out, { recursive: true, force: true });
        await fs.mkdir(out);
        execFileSync('sync');
        let r: { wallMs: number; maxRssMiB: number };
        if (t === 'hvprotect' || t === 'hvprotect-per-chunk') {
          warm(path.join(tmp, 'hvprotect-repo'));
          const c = forkChild(path.join(__dirname, 'restore-child.js'), [url, token, pointId, restored.hvprotect, String(SIZE), String(t === 'hvprotect' ? inFlight : 32), t === 'hvprotect' ? 'batched' : 'per-chunk']);
          await c.next();
          c.proc.send('go');
          const m = (await c.next()) as { wallMs: number; maxRssKiB: number };
          r = { wallMs: m.wallMs, maxRssMiB: m.maxRssKiB / 1024 };
        } else if (t === 'restic') {
          warm(path.join(tmp, 'restic-repo'));
          r = await timed('restic', ['restore', 'latest', '--target', out], resticEnv);
        } else if (t === 'borg') {
          warm(path.join(tmp, 'borg-repo'));
          r = await timed('borg', ['extract', '::disk'], borgEnv, out);
        } else {
          warm(image);
          r = await timed('cp', [image, restored.cp], process.env);
        }
        // What the tool left in the page cache, written out: restic, borg and cp return with the
        // restored bytes still dirty in memory; hvprotect's restore ends with an fsync.
        const syncStart = process.hrtime.bigint();
        execFileSync('sync');
        const toDiskMs = r.wallMs + Number(process.hrtime.bigint() - syncStart) / 1e6;
        // Every tool must have produced the image, byte for byte (not timed).
        execFileSync('cmp', [image, restored[t]]);
        runs.set(t, [...(runs.get(t) ?? []), { ...r, toDiskMs }]);
        console.log(`round ${round + 1}: ${t} ${sec(r.wallMs)} s, on disk after ${sec(toDiskMs)} s, peak RSS ${r.maxRssMiB.toFixed(0)} MiB`);
      }
    }
    const med = (t: string) => median(runs.get(t)!.map((r) => r.wallMs));
    const medDisk = (t: string) => median(runs.get(t)!.map((r) => r.toDiskMs));
    const lines = [
      '# Whole-disk restore benchmark',
      '',
      `Run ${new Date().toISOString()} by \`node dist/bench/restore.js${args.length ? ' ' + args.join(' ') : ''}\`: a ${mib(SIZE)} MiB raw disk image holding ${mib(dataBytes)} MiB of data (1 MiB blocks: 40% random, 30% text, 30% never written), backed up once by each tool, then restored ${rounds === 1 ? 'once by each' : `${rounds} times by each, order rotated`}; every restored file compared with the image (\`cmp\`, not timed).`,
      '',
      '| tool | wall time (s)' + (rounds > 1 ? ', median | runs (s)' : '') + ' | on disk, with a `sync` after (s)' + (rounds > 1 ? ', median | runs (s)' : '') + ' | peak RSS (MiB) |',
      '| --- | ---: |' + (rounds > 1 ? ' --- |' : '') + ' ---: |' + (rounds > 1 ? ' --- |' : '') + ' ---: |',
      ...tools.map((t) => `| ${t === 'hvprotect' ? '**hvprotect**' : t} | ${sec(med(t))}${rounds > 1 ? ` | ${runs.get(t)!.map((r) => sec(r.wallMs)).join(', ')}` : ''} | ${sec(medDisk(t))}${rounds > 1 ? ` | ${runs.get(t)!.map((r) => sec(r.toDiskMs)).join(', ')}` : ''} | ${Math.max(...runs.get(t)!.map((r) => r.maxRssMiB)).toFixed(0)} |`),
      '',
      `Wall time, hvprotect / restic: ${(med('hvprotect') / med('restic')).toFixed(2)}x; / borg ${(med('hvprotect') / med('borg')).toFixed(2)}x; / cp ${(med('hvprotect') / med('cp')).toFixed(2)}x; / hvprotect-per-chunk ${(med('hvprotect') / med('hvprotect-per-chunk')).toFixed(2)}x.`,
      `On disk, hvprotect / restic: ${(medDisk('hvprotect') / medDisk('restic')).toFixed(2)}x; / borg ${(medDisk('hvprotect') / medDisk('borg')).toFixed(2)}x; / cp ${(medDisk('hvprotect') / medDisk('cp')).toFixed(2)}x.`,
      '',
      'Notes:',
      `- Machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${mib(os.totalmem())} MiB RAM, shared with other engineers' sessions (load average at the end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}): single wall times swing; compare within one run.`,
      `- hvprotect: the agent's restore data path (\`recovery/\`: PointDiskReader over the storage API's batched read \`POST /v1/chunks/read\`, 16 chunks of 256 KiB per request and ${inFlight} chunks in flight, the server sending them as stored from reused (pooled) response memory; each chunk decompressed and hashed (SHA-256) against its index slot on the agent's worker threads before it is written, consecutive chunks copied into one page-aligned staging buffer and written with O_DIRECT (past the page cache), two writes under way at once, all-zero slots not fetched, the raw file sparse, an fsync before it returns: its time is until the disk is on disk) in its own process; the storage API server (repository, zstd level 1) in another; loopback HTTP. The workflow around it (\`hvprotect restore\`: lease, activity scheduling) adds about 0.3 s (bench/backup-e2e.md's measurements of the same steps) and is not in this number.`,
      '- hvprotect-per-chunk: the same restore through the data path before batched reads (one `GET /v1/chunks/:digest` per chunk, 32 in flight, the server decoding and hashing each on its main thread and the agent hashing it again on its own), kept as the before of a before/after in one run.',
      '- restic 0.14 (Debian) `restic restore latest --target DIR` (AES-256 + Poly1305 always; compression auto); borg 1.2 (Debian) `borg extract` (no encryption, lz4); cp (coreutils, sparse=auto).',
      '- Each repository (and, for cp, the image) is read once before its run so that it is in the page cache; the output folder is emptied and `sync` run before each run. After each run a `sync` is timed: "on disk" is the wall time plus that sync, the time until the restored disk is durable (restic, borg and cp return with it still in the page cache).',
    ];
    await fs.writeFile(path.join(__dirname, '..', '..', 'bench', 'restore.md'), lines.join('\n') + '\n');
    console.log(lines.join('\n'));
  } finally {
    srv.proc.send('stop');
    await srv.next().catch(() => undefined);
    if (!args.includes('--keep')) await fs.rm(tmp, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
