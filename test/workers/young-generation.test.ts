// workers/young-generation.ts: every V8 heap of an hvprotect process keeps a 1 MiB-semi-space
// young generation, also after worker threads are made (Node's worker start puts V8's growth
// factor back, which is why the module sets it again). Each case runs in a process of its own,
// since V8 flags are process-wide; the control shows the heaps grow without the module.
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(__dirname, '..', '..');

/** New space (MiB) of the main thread and of a worker thread after both allocate hard, with a worker made first. */
function newSpaces(withModule: boolean): { main: number; worker: number } {
  const script = `
    ${withModule ? `require(${JSON.stringify(path.join(root, 'dist', 'workers', 'young-generation.js'))});` : ''}
    const v8 = require('node:v8');
    const { Worker } = require('node:worker_threads');
    const churn = \`let keep = []; for (let r = 0; r < 40; r++) { const a = []; for (let i = 0; i < 2e5; i++) a.push({ i, s: 'x' + i }); keep.push(a); if (keep.length > 3) keep.shift(); }\`;
    const size = \`require('node:v8').getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 1048576\`;
    const w = new Worker(churn + '; require("node:worker_threads").parentPort.postMessage(' + size + ')', { eval: true });
    w.once('message', (worker) => {
      eval(churn);
      console.log(JSON.stringify({ main: eval(size), worker }));
    });
  `;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`child failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

describe('young generation', () => {
  it('stays at its starting size on the main thread and on worker threads', () => {
    const { main, worker } = newSpaces(true);
    expect(main).toBeLessThanOrEqual(2);
    expect(worker).toBeLessThanOrEqual(2);
  });

  it('grows to V8 default of 32 MiB without the module (the control)', () => {
    const { main, worker } = newSpaces(false);
    expect(main).toBeGreaterThanOrEqual(16);
    expect(worker).toBeGreaterThanOrEqual(16);
  });
});
