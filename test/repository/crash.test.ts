// Kill a writer process at random moments (mid chunk write, mid index patch, mid commit, mid
// delete, mid GC), then open the repository and verify it: it must verify clean, and every
// point it lists must restore.
import { fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository, verifyRepository } from '../../repository';
import { restore } from './support';

const ROUNDS = 10;

function runAndKill(root: string, seed: number, killAfterMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(__dirname, 'crash-writer.js'), [root, String(seed)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    let timer: NodeJS.Timeout | undefined;
    child.on('message', () => {
      timer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    });
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (signal === 'SIGKILL') resolve();
      else reject(new Error(`writer exited by itself (code ${code})`));
    });
  });
}

describe('crash consistency', () => {
  it(`verifies clean after the writer is killed at ${ROUNDS} random moments`, async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'hvp-crash-'));
    let seen = 0;
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const killAfter = 30 + Math.floor(Math.random() * 400);
        await runAndKill(root, round * 1000, killAfter);
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
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
