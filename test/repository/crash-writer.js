// Child process of crash.test.ts: commits recovery points of a disk it keeps in memory (the
// writer's model) and kills itself with SIGKILL right after the Nth file-system step (open for
// writing, write, fsync, rename, mkdir, rm, unlink, append) of its Kth commit, so that the test
// can land a crash after every step of the commit sequence. Tells the parent, before each commit,
// the SHA-256 of the disk it commits, after it the point id, and where it crashed.
// Loads the TypeScript sources through @swc/core (the same compiler jest uses).
const fs = require('node:fs');
const { createHash } = require('node:crypto');
const swc = require('@swc/core');
require.extensions['.ts'] = (module, filename) => {
  const { code } = swc.transformSync(fs.readFileSync(filename, 'utf8'), {
    filename,
    jsc: { target: 'es2022', parser: { syntax: 'typescript' } },
    module: { type: 'commonjs' },
  });
  module._compile(code, filename);
};
const { Repository } = require('../../repository/index.ts');
const { backup, randomDisk } = require('./support.ts');

const [root, crashCommitText, crashStepText] = process.argv.slice(2);
const crashCommit = Number(crashCommitText);
const crashStep = Number(crashStepText); // 0: do not crash, report how many steps the commit took

const send = (msg) => new Promise((resolve) => process.send(msg, resolve));
let armed = false;
let steps = 0;

/** Wraps a file-system call so that, inside the armed commit, the process dies right after it. */
function step(owner, name) {
  const original = owner[name];
  owner[name] = async function (...args) {
    const result = await original.apply(this, args);
    if (!armed) return result;
    steps++;
    if (steps === crashStep) {
      await send({ landed: { step: steps, op: `${name} ${typeof args[0] === 'string' ? args[0] : ''}`.trim() } });
      process.kill(process.pid, 'SIGKILL');
      await new Promise(() => undefined);
    }
    return result;
  };
}

async function main() {
  const probe = await fs.promises.open(__filename, 'r');
  const fileHandle = Object.getPrototypeOf(probe);
  await probe.close();
  for (const name of ['write', 'writeFile', 'sync', 'datasync', 'truncate']) step(fileHandle, name);
  for (const name of ['rename', 'mkdir', 'rm', 'unlink', 'rmdir', 'appendFile', 'writeFile', 'copyFile']) step(fs.promises, name);
  const openForRead = fs.promises.open;
  step(fs.promises, 'open');
  const counted = fs.promises.open;
  // Opening to read changes nothing on disk: not a step.
  fs.promises.open = (file, flags, ...rest) => (flags === undefined || flags === 'r' || flags === 0 ? openForRead(file, flags, ...rest) : counted(file, flags, ...rest));

  // No syncfs: a killed process loses nothing the kernel holds, and the steps are the same.
  const repo = await Repository.open(root, { create: true, unsafeSkipSync: true, defaultChunkSize: 64 * 1024, encoderThreads: 0, createChunkFolders: false });
  await repo.ensureDataSource('vm-a');
  // Three points at most: from the fourth commit on, the commit also deletes the oldest point.
  await repo.resizeShadowStorage('vm-a', { maxPoints: 3 });
  const disk = randomDisk(16 * 64 * 1024 + 3000, 7);
  let base;
  for (let commit = 1; commit <= crashCommit; commit++) {
    const changed = [];
    for (let k = 0; k < 4; k++) {
      const slot = (commit * 7 + k * 5) % 17;
      disk.fill((commit + k) & 0xff, slot * 65536, Math.min(disk.length, slot * 65536 + 1000));
      changed.push(slot);
    }
    await send({ commit, sha256: createHash('sha256').update(disk).digest('hex') });
    const beforeCommit = async () => {
      armed = commit === crashCommit;
    };
    const m = await backup(repo, 'vm-a', disk, base ? { base, changedSlots: [...new Set(changed)].sort((a, b) => a - b), beforeCommit } : { beforeCommit });
    armed = false;
    await send({ committed: commit, pointId: m.pointId });
    base = m.pointId;
  }
  await send({ steps });
  await repo.close();
}
main().catch((err) => {
  console.error(err);
  process.exit(1);
});
