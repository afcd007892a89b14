// Turning the payload codec on for an installation that runs (#18): every history recorded without
// a codec (test/replay/histories) replays on a server worker with the key and the interceptor that
// keeps VM names out of search attributes, so running workflows carry on after the switch.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { historyFromJson } from '../replay/history-json';
import { dataConverterOf, loadTemporalSettings, withPayloadKeyFile, workflowInterceptorModules } from '../../temporal/connection';
import { PayloadKeyring } from '../../temporal/payload-codec';

const HISTORIES = path.resolve(__dirname, '..', 'replay', 'histories');

test('histories recorded without a codec replay on a worker with the payload key and the search-attribute interceptor', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-codec-replay-'));
  try {
    PayloadKeyring.create(path.join(dir, 'payload.keys'));
    const settings = withPayloadKeyFile(loadTemporalSettings({}), path.join(dir, 'payload.keys'));
    expect(workflowInterceptorModules(settings)).toHaveLength(1);
    const recorded = fs.readdirSync(HISTORIES).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(fs.readFileSync(path.join(HISTORIES, f), 'utf8')) as { workflowId: string; history: unknown });
    expect(recorded.length).toBeGreaterThan(5);
    const failures: string[] = [];
    let replayed = 0;
    for await (const r of Worker.runReplayHistories(
      { workflowsPath: require.resolve('../../workflows'), replayName: 'hvprotect-codec-replay', dataConverter: dataConverterOf(settings), interceptors: { workflowModules: workflowInterceptorModules(settings) } },
      recorded.map((h) => ({ workflowId: h.workflowId, history: historyFromJson(h.history) })),
    )) {
      replayed++;
      if (r.error) failures.push(`${r.workflowId}: ${r.error.name}: ${r.error.message}`);
    }
    expect(replayed).toBe(recorded.length);
    expect(failures).toEqual([]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 180_000);
