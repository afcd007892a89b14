// A Temporal connection closed while the client's gRPC retry waits to try a call again: with the
// SDK's own retry the retry throws "Channel has been shut down" from its timer, an uncaught
// exception that ends the process (and failed CI suites after their tests had passed); with
// hvprotect's (temporal/grpc-retry.ts) the call is rejected with a reason and nothing else happens.
// Each case runs in a process of its own, so that an uncaught exception is seen, not swallowed.
import { spawnSync } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';

const dist = path.resolve(__dirname, '..', '..', 'dist', 'temporal');

/** A port nothing listens on: every call to it fails UNAVAILABLE, which the retry retries. */
async function deadPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

function closeWhileRetryWaits(retry: 'sdk' | 'hvprotect', port: number): { uncaught?: string; call?: string; exit: number | null } {
  const script = `
    const { Connection } = require('@temporalio/client');
    const { closeSafeRetryInterceptor } = require(${JSON.stringify(path.join(dist, 'grpc-retry.js'))});
    process.on('uncaughtException', (e) => { console.log(JSON.stringify({ uncaught: e.message })); process.exit(0); });
    (async () => {
      const c = Connection.lazy({ address: '127.0.0.1:${port}', ${retry === 'hvprotect' ? 'interceptors: [closeSafeRetryInterceptor()]' : ''} });
      const call = c.workflowService.getSystemInfo({}).then(() => 'answered', (e) => e.message);
      // The first attempt fails at once (connection refused); its retry waits ~100 ms.
      await new Promise((r) => setTimeout(r, 30));
      await c.close();
      const outcome = await Promise.race([call, new Promise((r) => setTimeout(() => r('still pending after 5 s'), 5000))]);
      // Any retry timer left would fire in this second.
      await new Promise((r) => setTimeout(r, 1000));
      console.log(JSON.stringify({ call: outcome }));
    })();`;
  const r = spawnSync(process.execPath, ['-e', script], { cwd: path.resolve(__dirname, '..', '..'), encoding: 'utf8', timeout: 30_000 });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  let parsed: { uncaught?: string; call?: string } = {};
  try {
    parsed = JSON.parse(last);
  } catch {
    throw new Error(`child printed no result (exit ${r.status}): ${r.stdout}\n${r.stderr}`);
  }
  return { ...parsed, exit: r.status };
}

test('the SDK\'s own retry throws out of its timer when the connection was closed meanwhile (why ours exists)', async () => {
  const r = closeWhileRetryWaits('sdk', await deadPort());
  expect(r.uncaught).toMatch(/Channel has been shut down/);
}, 60_000);

test('hvprotect\'s retry rejects the call with the reason instead, and throws nothing', async () => {
  const r = closeWhileRetryWaits('hvprotect', await deadPort());
  expect(r.uncaught).toBeUndefined();
  expect(r.call).toMatch(/CANCELLED: the connection was closed while a retry of this call waited \(.*shut down.*\)/);
  expect(r.exit).toBe(0);
}, 60_000);
