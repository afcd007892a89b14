// Kill a writer process at random moments (mid chunk write, mid index patch, mid commit, mid
// delete, mid GC), then open the repository and verify it: it must verify clean, and every
// point it lists must restore.
import { fork } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository, verifyRepository } from '../../repository';
import { restore } from './support';

const ROUNDS = 12;

/**
 * Kills the writer either at a random moment after it is ready, or (aimAtCommit) a few
 * milliseconds after it announces the start of a commit, to land inside the commit sequence.
 */
function runAndKill(root: string, seed: number, killAfterMs: number, aimAtCommit: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(__dirname, 'crash-writer.js'), [root, String(seed)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let timer: NodeJS.Timeout | undefined;
    let commits = 0;
    child.on('message', (m) => {
      if (m === 'ready' && !aimAtCommit) timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      // let a couple of commits through first, then kill 0-7 ms into one
      if (m === 'commit' && aimAtCommit && ++commits === 3) timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs % 8);
    });
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (signal === 'SIGKILL') resolve();
      else reject(new Error(`writer exited by itself (code ${code})`));
    });
  });
}

async function leftovers(root: string): Promise<number> {
  let n = 0;
  const pointsDir = path.join(root, 'datasources', 'vm-a', 'points');
  for (const p of await readdir(pointsDir).catch(() => [] as string[])) {
    const files = await readdir(path.join(pointsDir, p)).catch(() => [] as string[]);
    if (!files.includes('manifest.json')) n++;
    n += files.filter((f) => f.includes('.tmp-')).length;
  }
  return n;
}

describe('crash consistency', () => {
  it(`verifies clean after the writer is killed at ${ROUNDS} random moments`, async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'hvp-crash-'));
    let seen = 0;
    let interrupted = 0;
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const killAfter = 30 + Math.floor(Math.random() * 400);
        await runAndKill(root, round * 1000, killAfter, round % 2 === 1);
        interrupted += await leftovers(root);
        const repo = await Repository.open(root, { unsafeSkipSync: true, encoderThreads: 0 });
        const report = await verifyRepository(repo, { readData: true });
        expect({ round, killAfter, damagedChunks: report.damagedChunks, damagedIndexes: report.damagedIndexes }).toEqual({ round, killAfter, damagedChunks: [], damagedIndexes: [] });
        const points = await repo.listPoints('vm-a').catch(() => []);
        for (const p of points) {
          const data = await restore(repo, 'vm-a', p.pointId);
          expect(data.length).toBe(p.disks[0].virtualSize);
        }
        seen = Math.max(seen, points.length);
        await repo.close();
      }
      expect(seen).toBeGreaterThan(0);
      // Point folders without a manifest (or with temp files) show kills that landed inside the
      // commit sequence; opening the repository cleaned them up.
      console.log(`crash test: ${interrupted} of ${ROUNDS} kills left a half-committed point folder behind`);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
