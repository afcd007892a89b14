// Reproduction (not a jest test): two backups of one VM started at the same moment can both
// acquire the backup lease and run side by side, because acquireBackupLease
// (activities/server/backup.ts) reads the lease file, then writes it with a rename: two
// activities running at once both read "no lease" and both write. Found by the load work.
//
//   npx tsc -p . && node dist/test/load/lease-race-repro.js [pairs]
//
// Starts its own dev server; prints, per pair, whether both backups committed and whether their
// lease intervals (from the histories) overlap. Exit code 1 when an overlap was seen.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, startDevServer } from '../../temporal/dev-server';
import { loadTemporalSettings } from '../../temporal/connection';
import { SERVER_TASK_QUEUE } from '../../temporal/task-queues';
import { startTestStack } from '../support/stack';
import { leaseInterval, overlappingPairs, readWorkflowRuns } from './history';

async function main(): Promise<void> {
  const pairs = Number(process.argv[2] ?? '10');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-lease-race-'));
  const dev = await startDevServer({ dbFile: path.join(dir, 'db.sqlite'), port: await freePort(), headless: true, readyTimeoutMs: 120_000 });
  const stack = await startTestStack({ hosts: ['hv01'], temporal: loadTemporalSettings({ TEMPORAL_ADDRESS: dev.address, TEMPORAL_NAMESPACE: 'default' }) });
  let overlaps = 0;
  try {
    for (let k = 0; k < pairs; k++) {
      const f = await stack.lab.createVm({ name: `race${k}`, host: 'hv01', disks: [{ sizeBytes: 4 << 20, content: { kind: 'random', seed: k, fill: 1 } }] });
      const ids = [0, 1].map((i) => `backup/race${k}/${i}`);
      const handles = await Promise.all(ids.map((workflowId) => stack.client.workflow.start('backupVm', { taskQueue: SERVER_TASK_QUEUE, workflowId, args: [{ dataSource: `race${k}`, vm: f.vmId }] })));
      const outcomes = await Promise.allSettled(handles.map((h) => h.result()));
      const runs = await readWorkflowRuns(stack.client, ids.map((workflowId) => ({ workflowId })));
      const pairsOverlapping = overlappingPairs(runs.map(leaseInterval).filter((x) => !!x) as NonNullable<ReturnType<typeof leaseInterval>>[]);
      overlaps += pairsOverlapping.length ? 1 : 0;
      const points = await stack.server.repository.listPoints(`race${k}`);
      console.log(`pair ${k}: ${outcomes.map((o) => o.status).join(' + ')}, ${points.length} point(s), lease held by both at once: ${pairsOverlapping.length > 0}`);
    }
  } finally {
    await stack.stop();
    await dev.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`${overlaps}/${pairs} pairs ran side by side`);
  process.exit(overlaps ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
