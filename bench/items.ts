// Benchmark: item-level recovery out of a point of an 8 GiB NTFS disk — listing a 2,000-entry
// folder and pulling a 256 MiB file — against restoring the whole disk first, in time and bytes
// read from the repository. The disk (GPT, one NTFS partition made by mkntfs and filled through an
// ntfs-3g mount; 1.5 GiB of files) is backed up once through the storage API (not timed).
//
//   npx tsc -p . && node dist/bench/items.js [--disk-gib 8] [--keep]
//
// Needs root (an ntfs-3g FUSE mount). Writes bench/items.md. Temp data under /tmp, removed.
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { forkChild } from './support';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const DISK = Math.round(Number(opt('disk-gib', '8')) * GiB);
const sec = (ms: number) => (ms / 1000).toFixed(2);
const mib = (b: number) => (b / MiB).toFixed(1);

async function main(): Promise<void> {
  const tmp = await fs.mkdtemp(path.join('/tmp', 'hvp-bench-items-'));
  const srv = forkChild(path.join(__dirname, 'repository-ingest-child.js'), ['server', path.join(tmp, 'repo'), String(256 * 1024)]);
  try {
    const disk = path.join(tmp, 'disk.raw');
    console.log(`making a ${DISK / GiB} GiB GPT disk with NTFS in ${tmp}`);
    const t0 = Date.now();
    execFileSync('bash', ['-euo', 'pipefail', '-c', `
      truncate -s ${DISK - 2 * MiB} ntfs.img
      mkntfs -q -Q -F -L BENCHNTFS ntfs.img >/dev/null 2>&1
      mkdir mnt && { ntfs-3g -o no_detach ntfs.img mnt & ntfs3g=$!; }
      trap 'umount mnt 2>/dev/null || true' EXIT
      until mountpoint -q mnt; do sleep 0.05; done
      mkdir mnt/folder mnt/data
      for i in $(seq 1 2000); do printf 'entry %d\\n' $i > mnt/folder/document-$(printf %04d $i).txt; done
      head -c ${256 * MiB} /dev/urandom > mnt/data/big.bin
      for i in 1 2 3 4 5; do head -c ${256 * MiB} /dev/urandom > mnt/data/other-$i.bin; done
      umount mnt; wait $ntfs3g; trap - EXIT  # umount returns before ntfs-3g has written everything
      truncate -s ${DISK} disk.raw
      printf 'label: gpt\\nstart=2048, size=${(DISK - 2 * MiB) / 512}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\\n' | sfdisk -q disk.raw
      dd if=ntfs.img of=disk.raw bs=4M seek=1M oflag=seek_bytes conv=sparse,notrunc status=none
      rm ntfs.img
    `], { cwd: tmp, stdio: ['ignore', 'inherit', 'inherit'] });
    console.log(`  made in ${sec(Date.now() - t0)} s`);
    const { url, token } = (await srv.next()) as { url: string; token: string };
    const ag = forkChild(path.join(__dirname, 'repository-ingest-child.js'), ['agent', url, token, disk, '-', '-']);
    const { pointId } = (await ag.next()) as { pointId: string };
    console.log(`backed up as point ${pointId}`);

    const { StorageClient } = await import('../storage-api/client');
    const { openPoint, findVolume, fileSystemOf, listItems, restoreItem } = await import('../recovery/items');
    const client = new StorageClient(url, token);
    const rows: Array<{ what: string; ms: number; fetched: number; chunks: number; note: string }> = [];

    // Whole disk first: the agent's restore data path in its own process (bench/restore-child).
    const rc = forkChild(path.join(__dirname, 'restore-child.js'), [url, token, pointId, path.join(tmp, 'restored.raw'), String(DISK), '32']);
    await rc.next();
    rc.proc.send('go');
    const whole = (await rc.next()) as { wallMs: number; bytesWritten: number };
    rows.push({ what: 'restore the whole disk (raw)', ms: whole.wallMs, fetched: whole.bytesWritten, chunks: Math.round(whole.bytesWritten / (256 * 1024)), note: 'then any file can be read from it' });
    await fs.rm(path.join(tmp, 'restored.raw'), { force: true });

    // Item level, each from a cold reader (a fresh open of the point).
    for (const step of ['ls', 'file'] as const) {
      const t = performance.now();
      const p = await openPoint(client, 'bench-vm', pointId);
      let note = '';
      try {
        const fsys = fileSystemOf(findVolume(p, 'BENCHNTFS'));
        if (step === 'ls') note = `${(await listItems(fsys, '/folder', false)).length} entries`;
        else {
          const report = { restored: [], skipped: [] } as Parameters<typeof restoreItem>[3];
          await restoreItem(fsys, '/data/big.bin', path.join(tmp, 'items'), report);
          note = `${mib(report.restored[0].bytes)} MiB restored`;
        }
      } finally {
        await p.close();
      }
      const f = p.fetched();
      rows.push({ what: step === 'ls' ? 'files ls BENCHNTFS:/folder (2,000 entries)' : 'files restore BENCHNTFS:/data/big.bin (256 MiB)', ms: performance.now() - t, fetched: f.bytes, chunks: f.chunks, note });
    }
    const lines = [
      '# Item-level recovery benchmark',
      '',
      `Run ${new Date().toISOString()} by \`node dist/bench/items.js${args.length ? ' ' + args.join(' ') : ''}\`: a ${DISK / GiB} GiB disk (GPT, one NTFS partition by mkntfs, filled through an ntfs-3g mount: a folder of 2,000 small files, a 256 MiB file and 5 × 256 MiB of other files), backed up once through the storage API. Each step opens the point afresh (cold chunk cache), over loopback HTTP, as \`hvprotect files\` does.`,
      '',
      '| step | wall time (s) | fetched from the repository (MiB) | chunks | |',
      '| --- | ---: | ---: | ---: | --- |',
      ...rows.map((r) => `| ${r.what} | ${sec(r.ms)} | ${mib(r.fetched)} | ${r.chunks} | ${r.note} |`),
      '',
      `Listing the folder: ${(rows[0].ms / rows[1].ms).toFixed(0)}× faster than restoring the disk first, ${((rows[1].fetched / DISK) * 100).toFixed(3)}% of the disk fetched. Pulling the 256 MiB file: ${(rows[0].ms / rows[2].ms).toFixed(1)}× faster, ${mib(rows[2].fetched)} MiB fetched.`,
      '',
      `Machine: ${os.cpus().length} cores, shared with other engineers' sessions (load average at the end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}).`,
    ];
    await fs.writeFile(path.join(__dirname, '..', '..', 'bench', 'items.md'), lines.join('\n') + '\n');
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
