// Child process of crash.test.ts: backs up, deletes and collects garbage in a loop until it is
// killed. Loads the TypeScript sources through @swc/core (the same compiler jest uses).
const fs = require('node:fs');
const swc = require('@swc/core');
require.extensions['.ts'] = (module, filename) => {
  const { code } = swc.transformSync(fs.readFileSync(filename, 'utf8'), {
    filename,
    jsc: { target: 'es2022', parser: { syntax: 'typescript' } },
    module: { type: 'commonjs' },
  });
  module._compile(code, filename);
};
const { Repository, collectGarbage } = require('../../repository/index.ts');
const { backup, randomDisk } = require('./support.ts');

async function main() {
  const [root, seedText] = process.argv.slice(2);
  let seed = Number(seedText);
  // odd seeds store chunks on the worker threads, even ones on the event loop
  const repo = await Repository.open(root, { create: true, defaultChunkSize: 64 * 1024, encoderThreads: Math.floor(seed / 1000) % 2 ? 2 : 0, createChunkFolders: false });
  await repo.resizeShadowStorage('vm-a', { maxPoints: 4 }).catch(() => undefined);
  let disk = randomDisk(16 * 64 * 1024 + 3000, seed);
  const points = await repo.listPoints('vm-a').catch(() => []);
  let base = points.length ? points[points.length - 1].pointId : undefined;
  process.send?.('ready');
  for (let i = 0; ; i++) {
    seed++;
    const changed = [];
    for (let k = 0; k < 4; k++) {
      const slot = (seed * 7 + k * 5) % 17;
      disk.fill((seed + k) & 0xff, slot * 65536, Math.min(disk.length, slot * 65536 + 1000));
      changed.push(slot);
    }
    const beforeCommit = async () => process.send?.('commit');
    const m = await backup(repo, 'vm-a', disk, base ? { base, changedSlots: [...new Set(changed)].sort((a, b) => a - b), beforeCommit } : { beforeCommit });
    if (!base) await repo.ensureDataSource('vm-a');
    base = m.pointId;
    if (i % 3 === 2) await collectGarbage(repo, { graceMs: 0, memoryBudgetEntries: 8 });
    if (i % 4 === 3) await repo.deleteOldestPoint('vm-a').catch(() => undefined);
  }
}
main().catch((err) => {
  console.error(err);
  process.exit(1);
});
