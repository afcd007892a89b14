import fc from 'fast-check';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  appendWrites,
  changesBetween,
  currentTrackingPoint,
  formatTrackingId,
  mergeRanges,
  parseTrackingId,
  resetTrackingLog,
} from '../../hypervisor/lab/change-tracking';

describe('change-tracking log', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'hvp-rct-'));
  });
  afterAll(() => fsp.rm(dir, { recursive: true, force: true }));

  it('returns exactly the ranges written between two points, merged', async () => {
    const f = path.join(dir, 'a.rct');
    const epoch = await resetTrackingLog(f);
    expect(await currentTrackingPoint(f)).toEqual({ epoch, seq: 0 });
    await appendWrites(f, [{ offset: 0, length: 4096 }]);
    const p1 = await currentTrackingPoint(f);
    await appendWrites(f, [
      { offset: 8192, length: 4096 },
      { offset: 12288, length: 4096 },
      { offset: 65536, length: 8192 },
    ]);
    const p2 = await appendWrites(f, [{ offset: 69632, length: 4096 }]);
    expect(p2.seq).toBe(5);
    const r = await changesBetween(f, p1, p2);
    expect(r).toEqual({
      tracked: true,
      ranges: [
        { offset: 8192, length: 8192 },
        { offset: 65536, length: 8192 },
      ],
    });
    expect(await changesBetween(f, p2, p2)).toEqual({ tracked: true, ranges: [] });
  });

  it('ignores a torn last record and cuts it off at the next append', async () => {
    const f = path.join(dir, 'torn.rct');
    const epoch = await resetTrackingLog(f);
    await appendWrites(f, [{ offset: 0, length: 512 }]);
    await fsp.appendFile(f, Buffer.from('RCTR\x00\x00garbage'));
    expect(await currentTrackingPoint(f)).toEqual({ epoch, seq: 1 });
    const p = await appendWrites(f, [{ offset: 1024, length: 512 }]);
    expect(p.seq).toBe(2);
    expect(await changesBetween(f, { epoch, seq: 0 }, p)).toEqual({
      tracked: true,
      ranges: [
        { offset: 0, length: 512 },
        { offset: 1024, length: 512 },
      ],
    });
  });

  it('cannot answer across a reset, for ids beyond the log, or over a damaged record', async () => {
    const f = path.join(dir, 'reset.rct');
    const e1 = await resetTrackingLog(f);
    await appendWrites(f, [{ offset: 0, length: 512 }]);
    const e2 = await resetTrackingLog(f);
    expect(e2).not.toBe(e1);
    const r = await changesBetween(f, { epoch: e1, seq: 0 }, { epoch: e2, seq: 0 });
    expect(r.tracked).toBe(false);
    expect(await changesBetween(f, { epoch: e2, seq: 0 }, { epoch: e2, seq: 7 })).toMatchObject({ tracked: false });
    await appendWrites(f, [{ offset: 0, length: 512 }, { offset: 4096, length: 512 }]);
    const buf = await fsp.readFile(f);
    buf[64 + 20] ^= 0xff; // flip a byte of record 1's offset
    await fsp.writeFile(f, buf);
    const d = await changesBetween(f, { epoch: e2, seq: 0 }, { epoch: e2, seq: 2 });
    expect(d).toMatchObject({ tracked: false, reason: expect.stringMatching(/damaged/) });
    await fsp.writeFile(path.join(dir, 'junk.rct'), 'not a log at all, not at all, not at all, not at all, not at all.');
    expect(await changesBetween(path.join(dir, 'junk.rct'), { epoch: e2, seq: 0 }, { epoch: e2, seq: 0 })).toMatchObject({ tracked: false });
  });

  it('parses only well-formed ids', () => {
    const id = formatTrackingId({ epoch: '0f8c2a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6', seq: 42 });
    expect(parseTrackingId(id)).toEqual({ epoch: '0f8c2a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6', seq: 42 });
    for (const bad of ['', 'rct:', 'rct:x:1', `${id}x`, 'rct:0f8c2a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6:-1', 'rct:0f8c2a4e-1b2c-4d5e-8f90-a1b2c3d4e5f6:01', 42, null]) {
      expect(parseTrackingId(bad)).toBeUndefined();
    }
  });

  it('merges ranges', () => {
    expect(mergeRanges([{ offset: 10, length: 5 }, { offset: 0, length: 10 }, { offset: 20, length: 0 }, { offset: 12, length: 1 }])).toEqual([{ offset: 0, length: 15 }]);
  });

  it('answers any pair of points with the union of the ranges appended between them (property)', async () => {
    const range = fc.record({ offset: fc.integer({ min: 0, max: 1 << 20 }), length: fc.integer({ min: 1, max: 1 << 16 }) });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(range, { maxLength: 5 }), { minLength: 1, maxLength: 12 }), fc.nat(), fc.nat(), async (batches, a, b) => {
        const f = path.join(dir, `prop-${run++}.rct`);
        const epoch = await resetTrackingLog(f);
        const all: { offset: number; length: number }[] = [];
        for (const batch of batches) {
          await appendWrites(f, batch);
          all.push(...batch);
        }
        const [from, to] = [a % (all.length + 1), b % (all.length + 1)].sort((x, y) => x - y);
        const r = await changesBetween(f, { epoch, seq: from }, { epoch, seq: to });
        expect(r).toEqual({ tracked: true, ranges: mergeRanges(all.slice(from, to)) });
        await fsp.rm(f);
      }),
      { numRuns: 60 },
    );
  });
});
