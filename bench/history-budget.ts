// Benchmark: Temporal history events per backup of a sparse multi-TB disk — the history budget of
// issue #12. A lab VM with one dynamic VHDX of --size-tib (default 2) whose data is spread through
// it (1 MiB regions, --fill of them, default 0.001: one region in a thousand; each allocates its
// 32 MiB VHDX block, so ~3% of the disk is read), an initial replica,
// then an express full after scattered writes; each backup's event count is read from its history,
// next to a 2 MiB disk's for comparison. Writes bench/history-budget.md.
//
//   npm run -s build && node dist/bench/history-budget.js [--size-tib 2] [--fill 0.001]
//
// Progress travels in heartbeats (no events); the count depends on the backup's shape (steps,
// disks, relocations), not on bytes or time. Before #12 the agent signalled progress every 2 s,
// four events each: the projection column says what that would have cost at the measured rate.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const MiB = 1024 * 1024;
const TiB = 1024 ** 4;

async function main(): Promise<void> {
  const SIZE = Math.round(Number(opt('size-tib', '2')) * TiB);
  const FILL = Number(opt('fill', '0.001'));
  const { startDevServer, freePort } = await import('../temporal/dev-server');
  const { loadTemporalSettings } = await import('../temporal/connection');
  const { startTestStack, startBackup } = await import('../test/support/stack');
  type BackupVmResult = import('../workflows/backup-vm').BackupVmResult;

  const tmp = await fs.mkdtemp(path.join('/tmp', 'hvp-history-budget-'));
  const dev = await startDevServer({ dbFile: path.join(tmp, 'temporal.sqlite'), port: await freePort(), headless: true, readyTimeoutMs: 120_000 });
  const stack = await startTestStack({ hosts: ['hv01'], temporal: loadTemporalSettings({ TEMPORAL_ADDRESS: dev.address, TEMPORAL_NAMESPACE: dev.namespace }) });
  const rows: string[] = [];
  try {
    const run = async (label: string, ds: string, vmId: string, virtualSize: number) => {
      const t0 = performance.now();
      const h = await startBackup(stack, { dataSource: ds, vm: vmId });
      const r = (await h.result()) as BackupVmResult;
      const seconds = (performance.now() - t0) / 1000;
      const events = (await h.fetchHistory()).events?.length ?? 0;
      const read = r.disks.reduce((s, d) => s + d.bytesRead, 0);
      const transferS = r.disks.reduce((s, d) => s + d.durationMs, 0) / 1000;
      // What the agent's old 2 s progress signal would have added for this transfer time, and per TB at this rate.
      const rate = transferS > 0 ? read / transferS : 0;
      const oldPerTB = rate > 0 ? Math.round((TiB / rate / 2) * 4) : 0;
      // Per-TiB figures only where there is a TiB to speak of (a 2 MiB disk's would be noise).
      const big = virtualSize >= TiB;
      rows.push(
        `| ${label} | ${r.kind} | ${big ? (virtualSize / TiB).toFixed(1) : `${virtualSize / MiB} MiB`} | ${(read / MiB).toFixed(0)} | ${seconds.toFixed(1)} | **${events}** | ${big ? (events / (virtualSize / TiB)).toFixed(1) : '—'} | ${read >= 1024 * MiB ? oldPerTB.toLocaleString('en') : '—'} |`,
      );
      console.log(rows[rows.length - 1]);
    };
    const small = await stack.lab.createVm({ name: 'small', host: 'hv01', disks: [{ sizeBytes: 2 * MiB, content: { kind: 'random', seed: 1, fill: 1 } }] });
    await run('2 MiB disk', 'small', small.vmId, 2 * MiB);
    const t = performance.now();
    const big = await stack.lab.createVm({ name: 'big', host: 'hv01', disks: [{ sizeBytes: SIZE, content: { kind: 'random', seed: 2, fill: FILL } }] });
    console.log(`lab disk of ${SIZE / TiB} TiB made in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    await run(`${SIZE / TiB} TiB sparse disk`, 'big', big.vmId, SIZE);
    // Scattered writes all through the disk (1 MiB every SIZE/64), then an express full.
    for (let i = 0; i < 64; i++) await stack.lab.writeDisk('big', big.disks[0].diskId, Math.floor((i * SIZE) / 64 / MiB) * MiB, Buffer.alloc(MiB, i + 1));
    await run(`${SIZE / TiB} TiB sparse disk, 64 MiB changed`, 'big', big.vmId, SIZE);
  } finally {
    await stack.stop();
    await dev.kill();
    await fs.rm(tmp, { recursive: true, force: true });
  }
  const md = [
    '# History budget: events per backup of a sparse multi-TB disk',
    '',
    `Run of ${new Date().toISOString()} on this machine (2 cores, shared): \`node dist/bench/history-budget.js --size-tib ${SIZE / TiB} --fill ${FILL}\`.`,
    'Events = the backup workflow\'s whole history (start to completion). The last column is what the',
    'agent\'s progress signal before #12 (every 2 s, 4 events) would have added per TB read at the',
    'rate this run measured; the history limit is 51,200 events.',
    '',
    '| backup | kind | disk (TiB) | read MiB | wall s | events | events per TiB of disk | old signals per TiB read |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
  await fs.writeFile(path.join(__dirname, '..', '..', 'bench', 'history-budget.md'), md);
  console.log(md);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
