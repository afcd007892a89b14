// The replay suite: every history recorded from a real run (test/replay/histories, written by
// record-histories.temporal.test.ts) replays against the current workflow code. A change that
// would break a workflow already running in the field (a non-determinism error after an upgrade)
// fails here; guard it with patched() (see README, "Changing workflow code").
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { historyFromJson } from './history-json';
const workflowsPath = () => require.resolve('../../workflows');

const HISTORIES = path.join(__dirname, 'histories');

interface Recorded {
  scenario: string;
  workflowId: string;
  history: unknown;
}

function recorded(): Recorded[] {
  return fs
    .readdirSync(HISTORIES)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => JSON.parse(fs.readFileSync(path.join(HISTORIES, f), 'utf8')) as Recorded);
}

test('the recorded histories cover the backup, restore and protection workflows', () => {
  const scenarios = recorded().map((r) => r.scenario);
  for (const s of ['backup-initial-replica', 'backup-express-full', 'backup-migration-in-cluster', 'backup-cancelled', 'backup-located-by-hint', 'restore-export', 'protection-continue-as-new']) {
    expect(scenarios).toContain(s);
  }
});

test('every recorded history replays against the current workflow code', async () => {
  const histories = recorded();
  const failures: string[] = [];
  const results = Worker.runReplayHistories(
    { workflowsPath: workflowsPath(), replayName: 'hvprotect-replay' },
    histories.map((h) => ({ workflowId: h.workflowId, history: historyFromJson(h.history) })),
  );
  let replayed = 0;
  for await (const r of results) {
    replayed++;
    if (r.error) failures.push(`${histories.find((h) => h.workflowId === r.workflowId)?.scenario ?? r.workflowId}: ${r.error.name}: ${r.error.message}`);
  }
  expect(replayed).toBe(histories.length);
  expect(failures).toEqual([]);
}, 180_000);
