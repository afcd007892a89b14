// workers/old-generation.ts: after a full collection the old generation may grow to twice its
// live size before the next, where V8 alone leaves ~10% when little is being promoted (a protection
// server while it receives uploads). Read from V8's own account of each limit it sets
// (--trace-gc-verbose), in a process of its own per case, with the young generation as hvprotect
// runs it; the control shows V8's own small factor in the same situation.
import { spawn } from 'node:child_process';
import path from 'node:path';

const root = path.resolve(__dirname, '..', '..');
const dist = (m: string) => JSON.stringify(path.join(root, 'dist', 'workers', `${m}.js`));

interface Limit {
  oldKiB: number;
  limitKiB: number;
  factor: number;
}

/**
 * The limit V8 set in a full collection after ~35 MB of live objects and 6 s idle: the old
 * generation's allocation rate, against which V8 sizes the room, has fallen to almost nothing.
 */
function limitAfterIdleGc(withModule: boolean): Promise<Limit> {
  const script = `
    require(${dist('young-generation')});
    ${withModule ? `require(${dist('old-generation')});` : ''}
    const live = [];
    for (let i = 0; i < 400000; i++) live.push({ i, s: 'live-' + i });
    globalThis.gc(); // V8 learns how fast it marks
    setTimeout(() => { globalThis.gc(); console.log('kept', live.length); }, 6000);
  `;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', '--trace-gc-verbose', '-e', script], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`child failed (${code}): ${err}`));
      const limits = [...out.matchAll(/\[HeapController\] Limit: old size: (\d+) KB, new limit: (\d+) KB \(([\d.]+)\)/g)];
      if (!limits.length) return reject(new Error(`V8 reported no limit:\n${out.slice(-2000)}`));
      const last = limits[limits.length - 1];
      resolve({ oldKiB: Number(last[1]), limitKiB: Number(last[2]), factor: Number(last[3]) });
    });
  });
}

describe('old generation', () => {
  jest.setTimeout(60_000);
  let withModule: Limit;
  let control: Limit;
  beforeAll(async () => {
    [withModule, control] = await Promise.all([limitAfterIdleGc(true), limitAfterIdleGc(false)]);
  });

  it('may grow to twice its live size before the next full collection', () => {
    expect(withModule.oldKiB).toBeGreaterThan(20 * 1024);
    expect(withModule.factor).toBe(2);
    expect(withModule.limitKiB).toBeGreaterThanOrEqual(2 * withModule.oldKiB);
  });

  it('gets a factor under 2 from V8 alone in the same situation (the control)', () => {
    expect(control.oldKiB).toBeGreaterThan(20 * 1024);
    expect(control.factor).toBeLessThan(1.5);
    expect(control.limitKiB).toBeLessThan(2 * control.oldKiB);
  });
});
