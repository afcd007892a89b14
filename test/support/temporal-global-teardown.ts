import fs from 'node:fs';

export default async function globalTeardown(): Promise<void> {
  const t = globalThis.__HVP_TEMPORAL__;
  if (!t) return;
  await t.server.stop();
  if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(t.dir, { recursive: true, force: true });
}
