// The storage client against a server that answers anything (a proxy, a wrong port, a damaged
// server): random statuses and bodies become StorageApiErrors or errors, never a crash of the
// agent process (an exception thrown inside an event handler) or an unbounded read of an error.
import * as http from 'node:http';
import fc from 'fast-check';
import { StorageApiError, StorageClient } from '../../storage-api';

const SEED = 4242;

describe('storage client against hostile answers', () => {
  let server: http.Server;
  let url: string;
  let next: { status: number; body: Buffer; type: string } = { status: 200, body: Buffer.alloc(0), type: 'application/json' };
  let endless = false;
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);

  beforeAll(async () => {
    process.on('uncaughtException', onUncaught);
    server = http.createServer((req, res) => {
      req.resume();
      if (endless) {
        // An error answer that never ends: 1 MiB pieces until the client hangs up.
        res.writeHead(500, { 'content-type': 'text/plain' });
        const piece = Buffer.alloc(1024 * 1024, 0x41);
        const pump = () => {
          while (!res.destroyed && res.write(piece));
          if (!res.destroyed) res.once('drain', pump);
        };
        res.on('error', () => undefined);
        pump();
        return;
      }
      req.on('end', () => {
        res.writeHead(next.status, { 'content-type': next.type, 'content-length': next.body.length });
        res.end(next.body);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address();
    url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(async () => {
    process.off('uncaughtException', onUncaught);
    await new Promise((r) => server.close(r));
  });

  it('answers become values or errors, never uncaught exceptions', async () => {
    const client = new StorageClient(url, 'hvp_x');
    const bodies = fc.oneof(
      fc.constantFrom('null', '[]', '"x"', '5', 'true', '{}', '{"error":5,"message":{},"hint":[]}', '{"error":"E","message":"m","details":"x"}', '', '{', 'HVPFIDX1', '\u0000'.repeat(70)).map((s) => Buffer.from(s)),
      fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
      fc.uint8Array({ minLength: 0, maxLength: 100 }).map((b) => Buffer.concat([Buffer.from('HVPFIDX1'), Buffer.from(b)])),
    );
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(200, 201, 204, 400, 401, 404, 409, 413, 500, 502, 503), bodies, fc.nat(5), async (status, body, op) => {
        next = { status, body, type: 'application/json' };
        const point = { dataSource: 'vm1', pointId: '20261124T154130.123Z' };
        const calls = [
          () => client.getIndex(point, 'disk0'),
          () => client.listPoints('vm1'),
          () => client.getPoint(point),
          () => client.beginSession('vm1'),
          () => client.missingChunks(['0'.repeat(64)]),
          () => client.issueToken('x'),
        ];
        let timer: NodeJS.Timeout | undefined;
        try {
          // Every call settles: an exception inside the client's event handlers would leave it pending.
          await Promise.race([calls[op](), new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('HANG: the call never settled')), 5000)))]);
        } catch (err) {
          expect((err as Error).message).not.toMatch(/^HANG/);
          // Refusals are the API's error type; a 2xx body that is not what the call expects may
          // also fail to parse. A damaged index is always a StorageApiError.
          if (status >= 300 || op === 0) expect(err).toBeInstanceOf(StorageApiError);
        } finally {
          clearTimeout(timer);
        }
        await new Promise((r) => setImmediate(r));
      }),
      { seed: SEED, numRuns: 300 },
    );
    client.close();
    expect(uncaught.map(String)).toEqual([]);
  });

  it('reads at most 64 KiB of an error body, even an endless one', async () => {
    const client = new StorageClient(url, 'hvp_x');
    endless = true;
    const started = Date.now();
    await expect(client.listPoints('vm1')).rejects.toBeInstanceOf(StorageApiError);
    expect(Date.now() - started).toBeLessThan(10_000);
    endless = false;
    client.close();
  });
});
