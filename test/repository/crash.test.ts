// A writer process is killed right after each file-system step of a commit (the fourth, which
// also deletes the oldest point to stay within three), one step per run. After every crash the
// repository must open, verify clean, list either the old points or the new one whole, and every
// point it lists must restore to exactly the bytes the writer committed.
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Repository, verifyRepository } from '../../repository';
import { restore } from './support';

const CRASH_COMMIT = 4;

interface WriterRun {
  /** SHA-256 of the disk the writer committed (or was committing), by commit number. */
  model: Map<number, string>;
  /** Point ids of the commits that returned. */
  committed: Map<number, string>;
  landed?: { step: number; op: string };
  steps?: number;
  signal: NodeJS.Signals | null;
}

function runWriter(root: string, crashStep: number): Promise<WriterRun> {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(__dirname, 'crash-writer.js'), [root, String(CRASH_COMMIT), String(crashStep)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const run: WriterRun = { model: new Map(), committed: new Map(), signal: null };
    child.on('message', (m: { commit?: number; sha256?: string; committed?: number; pointId?: string; landed?: WriterRun['landed']; steps?: number }) => {
      if (m.commit !== undefined) run.model.set(m.commit, m.sha256!);
      if (m.committed !== undefined) run.committed.set(m.committed, m.pointId!);
      if (m.landed) run.landed = m.landed;
      if (m.steps !== undefined) run.steps = m.steps;
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      run.signal = signal;
      if (code !== 0 && signal !== 'SIGKILL') reject(new Error(`writer exited with code ${code}`));
      else resolve(run);
    });
  });
}

describe('crash consistency of the commit', () => {
  let steps = 0;

  beforeAll(async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'hvp-crash-'));
    try {
      const run = await runWriter(root, 0);
      expect(run.committed.size).toBe(CRASH_COMMIT);
      steps = run.steps!;
    } finally {
      await rm(root, { recursive: true, force: true });
    }
    // mkdir, index renames, fsyncs, the manifest's temp file and rename, the deletion's steps…
    expect(steps).toBeGreaterThanOrEqual(10);
  });

  it('after a kill at every step of the commit, the repository holds whole points that restore to the committed bytes', async () => {
    const outcomes: string[] = [];
    for (let crashStep = 1; crashStep <= steps; crashStep++) {
      const root = await mkdtemp(path.join(tmpdir(), 'hvp-crash-'));
      try {
        const run = await runWriter(root, crashStep);
        // The crash happened where it was aimed: inside the commit, after step `crashStep`.
        expect({ crashStep, signal: run.signal, landed: run.landed?.step, committedBefore: run.committed.size }).toEqual({ crashStep, signal: 'SIGKILL', landed: crashStep, committedBefore: CRASH_COMMIT - 1 });

        const repo = await Repository.open(root, { unsafeSkipSync: true, encoderThreads: 0 });
        try {
          const report = await verifyRepository(repo, { readData: true });
          expect({ crashStep, op: run.landed!.op, ok: report.ok, damagedChunks: report.damagedChunks, damagedIndexes: report.damagedIndexes }).toEqual({
            crashStep,
            op: run.landed!.op,
            ok: true,
            damagedChunks: [],
            damagedIndexes: [],
          });
          const listed = (await repo.listPoints('vm-a')).map((p) => p.pointId);
          const commitOf = new Map([...run.committed].map(([commit, pointId]) => [pointId, commit]));
          // The newest committed point is never deleted; at most one point is new: the interrupted commit's, whole.
          expect(listed).toContain(run.committed.get(CRASH_COMMIT - 1));
          const unknown = listed.filter((p) => !commitOf.has(p));
          expect(unknown.length).toBeLessThanOrEqual(1);
          for (const pointId of listed) {
            const commit = commitOf.get(pointId) ?? CRASH_COMMIT;
            const bytes = await restore(repo, 'vm-a', pointId);
            expect({ crashStep, pointId, sha256: createHash('sha256').update(bytes).digest('hex') }).toEqual({ crashStep, pointId, sha256: run.model.get(commit) });
          }
          outcomes.push(`${crashStep}:${unknown.length ? 'new' : 'old'}`);
        } finally {
          await repo.close();
        }
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    }
    // Kills early in the commit leave the old points, late ones the new point: both happened.
    expect(outcomes.some((o) => o.endsWith('old'))).toBe(true);
    expect(outcomes.some((o) => o.endsWith('new'))).toBe(true);
  });
});
