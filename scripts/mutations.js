#!/usr/bin/env node
'use strict';
// Mutation testing as a habit: each entry below breaks one piece of fault handling on purpose.
// The script copies the tree once (node_modules and .tools linked), then for each mutation:
// applies it, builds (the Temporal tests and the spawned CLI run from dist/), runs the tests
// aimed at it, and reverts. A mutation the tests do not catch "survived": the script exits 1.
//
//   node scripts/mutations.js                 every mutation
//   node scripts/mutations.js --only a,b      some of them (by name)
//   node scripts/mutations.js --list          names, files and aimed tests
//   node scripts/mutations.js --check         only that every mutation still applies (fast)
//   node scripts/mutations.js --keep          keep the copy (path printed) to look at a survivor
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');

/**
 * name: what is broken; file: where; from/to: exact text replaced (must occur exactly once, so a
 * refactoring that moves the code makes the script fail loudly instead of testing nothing);
 * tests: jest paths; only: optional test-name pattern (-t) to run fewer tests of those files.
 */
const MUTATIONS = [
  {
    name: 'batch-memory-reused-too-early',
    why: 'a batch buffer goes back to the pipeline\'s pool as soon as it is read, while its chunks are still being uploaded: a later read overwrites them',
    file: 'ingest/pipeline.ts',
    from: 'if (memory) void sent.then(() => giveBuffer(memory), () => giveBuffer(memory));',
    to: 'if (memory) giveBuffer(memory);',
    tests: ['test/ingest/pipeline.test.ts'],
  },
  {
    name: 'upload-bodies-never-swept',
    why: 'the storage API stops pacing scavenges by upload bytes: the HTTP parser\'s dead body pieces pile up as external memory until V8 runs a full mark-compact (~200 in a 4 GiB ingest)',
    file: 'storage-api/binary-body.ts',
    from: '    bodyBytesReceived(c.length);\n',
    to: '',
    tests: ['test/storage-api/upload-memory.test.ts'],
  },
  {
    name: 'pooled-body-given-back-while-lent',
    why: 'a pooled upload body goes back to the pool when it is sent to the encoder worker, not when the worker is done: the next upload overwrites chunks being hashed and stored',
    file: 'repository/encoder.ts',
    from: "        this.workers[best].postMessage({ op: 'store', id, pool, items, dir, tmpTag });\n",
    to: "        this.workers[best].postMessage({ op: 'store', id, pool, items, dir, tmpTag });\n        bodyPool.give(sab);\n",
    tests: ['test/storage-api/upload-memory.test.ts'],
  },
  {
    name: 'placement-asked-every-batch',
    why: 'a transfer on Hyper-V asks PowerShell whether the VM is still on the host after every 16 MiB batch, not at most every 10 s: hundreds of PowerShell processes per disk',
    file: 'activities/host/placement-check.ts',
    from: '      if (pending || now() - lastAsked < everyMs) return;\n',
    to: '      if (pending) return;\n',
    tests: ['test/hyperv/placement-check.test.ts'],
  },
  {
    name: 'restore-through-page-cache',
    why: 'the raw restore file is written buffered: every restored byte copied into the page cache and flushed again by the fsync',
    file: 'recovery/raw-writer.ts',
    from: "if ((opts.direct ?? true) && constants.O_DIRECT !== undefined) {",
    to: "if ((opts.direct ?? false) && constants.O_DIRECT !== undefined) {",
    tests: ['test/recovery/raw-writer.test.ts'],
  },
  {
    name: 'cancel-lost-to-a-timeout',
    why: 'a backup cancelled while its agent could not hear it ends FAILED with the transfer\'s timeout instead of cancelled',
    file: 'workflows/backup-vm.ts',
    from: "CancellationScope.current().consideredCancelled && patched('cancelled-backup-ends-cancelled')) {",
    to: "CancellationScope.current().consideredCancelled && patched('cancelled-backup-ends-cancelled') && false) {",
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'agent is dead',
  },
  {
    name: 'jobs-not-pinned-to-their-build',
    why: 'backups follow the current build (AUTO_UPGRADE) instead of staying pinned: an upgrade replays a running transfer on other code',
    file: 'workers/server.ts',
    from: "buildId }, defaultVersioningBehavior: 'PINNED' },",
    to: "buildId }, defaultVersioningBehavior: 'AUTO_UPGRADE' },",
    tests: ['test/upgrade/upgrade.temporal.test.ts'],
  },
  {
    name: 'transfer-retry-restarts-from-zero',
    why: 'a transfer retry ignores its heartbeat and re-reads the disk from slot 0',
    file: 'activities/host/index.ts',
    from: 'resume: resume && resume.nextSlot !== undefined ? resume : undefined,',
    to: 'resume: undefined,',
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'kill -9 of the agent mid-transfer',
  },
  {
    name: 'transfer-ignores-vm-leaving-host',
    why: "the transfer keeps reading on the old host after the VM moved (only the release follows it)",
    file: 'activities/host/index.ts',
    from: "if (ctx.cancellationSignal.aborted) throw new CancelledFailure('backup cancelled');\n              await placement.afterBatch();",
    to: "if (ctx.cancellationSignal.aborted) throw new CancelledFailure('backup cancelled');",
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'live migration within the cluster',
  },
  {
    name: 'silent-host-not-followed',
    why: 'a host whose agent stops answering fails the step instead of the VM being located again',
    file: 'workflows/follow-vm.ts',
    from: 'if (!moved && !isScheduleToStartTimeout(err)) throw err;',
    to: 'if (!moved) throw err;',
    tests: ['test/faults/damage.temporal.test.ts'],
    only: 'a host that dies mid-transfer',
  },
  {
    name: 'checkpoint-retry-returns-pending-checkpoint',
    why: 'a checkpoint retried by label after a crash while the VM was quiet is returned as it is: no disks, the VM left paused',
    file: 'hypervisor/lab/checkpoints.ts',
    from:
      '      if (!prior.pending) {\n        // A retry of a request that made its checkpoint: the same one, and a VM it quieted runs again.\n' +
      '        if (prior.resumeTo) resumeQuieted(rec, prior);\n        return backupCheckpoint(lab, rec, prior);\n      }',
    to: '      return backupCheckpoint(lab, rec, prior);',
    tests: ['test/faults/crash-matrix.temporal.test.ts'],
    only: 'lab:checkpoint-quiesced',
  },
  {
    name: 'claim-skips-gc-shield',
    why: 'a chunk a backup finds stored (touch, missing?, a batch insert) is not shielded from a running GC (ChunkStore.claim), so GC may unlink a chunk just said present or just reused',
    file: 'repository/chunk-store.ts',
    from: '      this.protectedDuringGc?.add(digest);\n      return undefined;',
    to: '      return undefined;',
    tests: ['test/repository/gc.test.ts'],
    only: 'shielded|encoder threads',
  },
  {
    name: 'chunk-read-skips-digest-check',
    why: 'the restore reader returns chunk bytes without comparing their SHA-256 with the chunk name',
    file: 'repository/chunk-store.ts',
    from: "if (sha256(raw).toString('hex') !== digest) throw bad('SHA-256 of the content does not match its name');",
    to: '',
    tests: ['test/repository/verify.test.ts'],
    only: 'CORRUPT',
  },
  {
    name: 'manifest-written-in-place',
    why: 'the manifest is written in place in two halves (half, fsync, half) instead of temp file + rename',
    file: 'repository/points.ts',
    from: 'await writeFileDurable(this.layout.manifestFile(ds, manifest.pointId), manifestText(manifest));',
    to:
      '{ const text = manifestText(manifest); const fh = await fs.open(this.layout.manifestFile(ds, manifest.pointId), \'w\');' +
      ' await fh.write(text.slice(0, text.length >> 1)); await fh.sync(); await fh.write(text.slice(text.length >> 1)); await fh.sync(); await fh.close(); }',
    tests: ['test/repository/crash.test.ts'],
  },
  {
    name: 'restore-original-skips-vm-off-check',
    why: 'a restore to the original place does not check that the VM is off',
    file: 'workflows/restore-vm.ts',
    from: "if (off.exists && off.state !== 'off') {",
    to: "if (off.exists && off.state !== 'off' && false) {",
    tests: ['test/backup/restore.temporal.test.ts'],
    only: 'original place',
  },
  {
    name: 'unknown-point-restores-newest',
    why: 'a restore of a recovery point that does not exist falls back to the newest point',
    file: 'activities/server/restore.ts',
    from: 'const point = pointId ? points.find((p) => p.pointId === pointId) : points[points.length - 1];',
    to: 'const point = (pointId ? points.find((p) => p.pointId === pointId) : undefined) ?? points[points.length - 1];',
    tests: ['test/backup/restore.temporal.test.ts'],
    only: 'unknown recovery point',
  },
  {
    name: 'mode-search-attribute-always-offline',
    why: 'every backup is labelled offline in the Web UI, so a BackupMode filter cannot tell them apart',
    file: 'workflows/backup-vm.ts',
    from: 'upsertSearchAttributes([{ key: SA.mode, value: decision.mode }]);',
    to: "upsertSearchAttributes([{ key: SA.mode, value: 'offline' }]);",
    tests: ['test/ui/web-ui.temporal.test.ts'],
  },
  {
    name: 'checkpoint-release-skipped',
    why: 'the release step reports success without releasing the checkpoint (neither by id nor by label)',
    file: 'activities/host/index.ts',
    from: "crashPoint('agent:before-release');",
    to: "crashPoint('agent:before-release');\n          if (req.label) return { released: [] };",
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'failure after the checkpoint|cancelling',
  },
  {
    name: 'upload-skips-digest-check',
    why: 'the storage API stores an uploaded chunk without recomputing its SHA-256',
    file: 'repository/encoder.ts',
    from: 'if (actual !== digest) return parentPort.postMessage({ id, mismatch: { digest, actual } });',
    to: '',
    tests: ['test/storage-api/refusals.test.ts', 'test/storage-api/ingest.test.ts'],
  },
  {
    name: 'commit-with-missing-chunk',
    why: 'an index naming a chunk the repository lacks is accepted, so a point can commit with a hole',
    file: 'repository/sessions.ts',
    from: 'if (missing.length > 0) {',
    to: 'if (missing.length > 0 && false) {',
    tests: ['test/storage-api/refusals.test.ts', 'test/repository/verify.test.ts'],
  },
  {
    name: 'data-source-id-unchecked',
    why: 'a data source id from a request becomes a path without its check, so `..` climbs out of the repository',
    file: 'repository/ids.ts',
    from: "export const checkDataSourceId = (v: unknown): string =>\n  check('data source id', v, DATA_SOURCE_ID,",
    to: "export const checkDataSourceId = (v: unknown): string =>\n  typeof v === 'string' && v !== '' ? v : check('data source id', v, DATA_SOURCE_ID,",
    tests: ['test/fuzz/storage-api.fuzz.test.ts'],
  },
  {
    name: 'release-resumes-vm-not-paused-by-us',
    why: 'releasing a checkpoint resumes a VM that somebody else paused or saved',
    file: 'hypervisor/lab/checkpoints.ts',
    from: "    if (ck.resumeTo && (rec.state === 'saved' || rec.state === 'paused')) rec.state = ck.resumeTo;\n    delete rec.checkpoint;\n  });",
    to: "    if (rec.state === 'saved' || rec.state === 'paused') rec.state = 'running';\n    delete rec.checkpoint;\n  });",
    tests: ['test/lab/checkpoint.test.ts', 'test/lab/vm-states.test.ts'],
  },
  {
    name: 'hyperv-release-skips-resume',
    why: "the Hyper-V release script converts the checkpoint without resuming the VM its offline checkpoint left quiet",
    file: 'hypervisor/hyperv/scripts.ts',
    from: "  $resumed = Resume-HvpHeld $vm ([string]$p.heldQuiet)\n  $script:step = 'Msvm_VirtualSystemSnapshotService'",
    to: "  $resumed = $null\n  $script:step = 'Msvm_VirtualSystemSnapshotService'",
    tests: ['test/hyperv/hyperv.test.ts'],
  },
  {
    name: 'hyperv-label-wildcard-without-recovery-filter',
    why: 'Hyper-V checkpoints are found by label with a wildcard match and without the recovery-checkpoint filter',
    file: 'hypervisor/hyperv/scripts.ts',
    from: "@(Get-HvpSnapshots $vm | Where-Object { [string]$_.SnapshotType -eq 'Recovery' -and [string]$_.Name -eq [string]$p.label } | ForEach-Object",
    to: '@(Get-HvpSnapshots $vm | Where-Object { [string]$_.Name -like [string]$p.label } | ForEach-Object',
    tests: ['test/hyperv/hyperv.test.ts'],
  },
  {
    name: 'grant-session-unchecked',
    why: "a backup grant is taken for any session: one job's agent patches another data source's session",
    file: 'storage-api/auth.ts',
    from: "if (params.sid !== undefined && params.sid !== g.sid) return refuse(",
    to: "if (params.sid === \"never\") return refuse(",
    tests: ['test/security/grants.test.ts'],
  },
  {
    name: 'grant-restore-any-chunk',
    why: "a restore grant reads any chunk of the repository, not only those its point names",
    file: 'storage-api/auth.ts',
    from: "if (typeof digest !== 'string' || !(await digests.has(g.ds, g.pid, digest))) {",
    to: "if (typeof digest !== 'string') {",
    tests: ['test/security/grants.test.ts'],
  },
  {
    name: 'agent-token-alone-reads',
    why: 'an agent token without a job grant is let through to reads',
    file: 'storage-api/auth.ts',
    from: "if (typeof header !== 'string') return refuse(",
    to: "if (typeof header !== 'string') return; if (false) return refuse(",
    tests: ['test/security/grants.test.ts'],
  },
  {
    name: 'unanswered-protection-shows-ok',
    why: 'a protection whose server does not answer is rated from its empty memo: OK, "waiting for the first backup"',
    file: 'client/protection.ts',
    from: '    const status: ProtectionStatus = state.unanswered\n',
    to: '    const status: ProtectionStatus = state.unanswered && !state.unanswered\n',
    tests: ['test/protection/servers.temporal.test.ts'],
  },
  {
    name: 'policy-change-waits-out-old-rpo',
    why: 'a protection given a shorter RPO judges its status only when the timer set by the old RPO fires (or the next job ends): no alert for up to a day',
    file: 'workflows/protection.ts',
    from: '      await condition(() => jobsEnded !== seen || policyChanges !== seenPolicy || moving || ending, wait as number);\n',
    to: '      await condition(() => jobsEnded !== seen || moving || ending, wait as number);\n',
    tests: ['test/protection/status.temporal.test.ts'],
  },
  {
    name: 'group-set-leaves-member-rpo',
    why: '`group set --rpo/--no-offline` changes the schedule of the VMs the group protects already, but not their RPO or offline policy',
    file: 'activities/server/groups.ts',
    from: '          await setProtectionPolicy(deps.client, g.dataSource,',
    to: '          if (false) await setProtectionPolicy(deps.client, g.dataSource,',
    tests: ['test/protection/groups.temporal.test.ts'],
  },
  {
    name: 'gc-exposed-to-every-context',
    why: "the V8 flag the storage API's scavenges need stays on: every context made afterwards, workflow sandboxes too, has a global gc",
    file: 'storage-api/young-gc.ts',
    from: "      v8.setFlagsFromString('--no-expose-gc');\n",
    to: "      v8.setFlagsFromString('--expose-gc');\n",
    tests: ['test/storage-api/young-gc.test.ts'],
  },
  {
    name: 'refusal-naming-ended-job-stands',
    why: '"backup now" (or remove) asked the moment a backup ended is refused, naming the backup that has just ended',
    file: 'client/protection.ts',
    from: "      if (!named || Date.now() > deadline || !(await hasClosed(client, named.workflowId))) throw refused;\n",
    to: '      throw refused;\n',
    tests: ['test/backup/backup.temporal.test.ts'],
  },
  {
    name: 'stale-state-looks-fresh',
    why: 'a protection that stopped answering keeps its last seen status on /metrics, and its age says 0: HvprotectProtectionNotAnswering never fires',
    file: 'metrics/metrics.ts',
    from: '      this.stateAge.set(labels, Math.max(0, (now.getTime() - answeredAt) / 1000));\n',
    to: '      this.stateAge.set(labels, 0);\n',
    tests: ['test/protection/metrics-state-age.test.ts'],
  },
  {
    name: 'retry-throws-after-close',
    why: 'the Temporal client\'s retry makes its next attempt on a closed connection unguarded: "Channel has been shut down" is thrown from a timer and ends the process',
    file: 'temporal/grpc-retry.ts',
    from: '      try {\n        return nextCall(opts);\n      } catch (err) {\n        return closedCall(err instanceof Error ? err.message : String(err));\n      }\n',
    to: '      return nextCall(opts);\n',
    tests: ['test/temporal/grpc-retry.test.ts'],
  },
  {
    name: 'upload-body-never-waits',
    why: 'an upload body is read into plain memory when the pool\'s budget is spent, instead of waiting unread: the server holds as many bodies as agents send at once',
    file: 'storage-api/binary-body.ts',
    from: '  withdraw = bodyPool.lend(announced, (b) => {\n',
    to: '  withdraw = ((_n: number, g: (b: Buffer) => void) => (g(bodyPool.take(announced)), () => undefined))(announced, (b) => {\n',
    tests: ['test/storage-api/upload-memory.test.ts'],
  },
  {
    name: 'young-generation-undone-by-workers',
    why: 'the semi-space growth factor is set once: the first worker thread\'s start puts V8\'s back, and the main thread\'s young generation grows to 32 MiB again',
    file: 'workers/young-generation.ts',
    from: "process.on('worker', (worker) => worker.once('online', () => v8.setFlagsFromString(NO_GROWTH)));\n",
    to: '',
    tests: ['test/workers/young-generation.test.ts'],
  },
  {
    name: 'sweep-pace-deaf-to-full-collections',
    why: 'the scavenges keep one pace whatever V8 does: where the old generation\'s room is small (a protection server) dead body pieces set off a full collection after another through every upload',
    file: 'storage-api/young-gc.ts',
    from: '.detail?.kind === perf.NODE_PERFORMANCE_GC_MAJOR) fullCollectionSeen();',
    to: '.detail?.kind === perf.NODE_PERFORMANCE_GC_MINOR) fullCollectionSeen();',
    tests: ['test/storage-api/sweep-pace.test.ts'],
  },
  {
    name: 'syncfs-helper-never-replaced',
    why: 'a syncfs helper that died (killed, out of memory) stays dead: every later commit fails until the server restarts',
    file: 'repository/durable.ts',
    from: 'if (!helper || helper.dead) helper = new SyncHelper();',
    to: 'if (!helper) helper = new SyncHelper();',
    tests: ['test/repository/syncfs.test.ts'],
  },
  {
    name: 'index-patch-old-digests-after-writing',
    why: 'a patch of a run of slots returns the digests it has just written as the old ones: the session counts no chunk as changed and the commit\'s added bytes are wrong',
    file: 'repository/fixed-index.ts',
    from: "        for (let k = first; k <= last; k++) {\n          const i = order[k];\n          span.copy(previous",
    to: "        for (let k = first; k <= last; k++) {\n          const i = order[k];\n          digests.copy(span, (slots[i] - min) * DIGEST_SIZE, i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE);\n          span.copy(previous",
    tests: ['test/repository/index-patch.test.ts'],
  },
  {
    name: 'schedule-describe-not-asked-again',
    why: 'a schedule whose own workflow has not run its first task (just created, Temporal just restarted) fails the describe at once: npm start, protect and list fail now and then',
    file: 'client/protection.ts',
    from: '      if (Date.now() + delay > deadline) {',
    to: '      if (Date.now() + delay > deadline || delay > 0) {',
    tests: ['test/protection/schedule-describe.test.ts'],
  },
  {
    name: 'schedule-describe-retries-final-refusals',
    why: 'a describe refused for good (permission denied, Temporal unreachable after the connection retries) is asked again for 20 s before the error',
    file: 'client/protection.ts',
    from: 'if (code !== undefined && FINAL_DESCRIBE_CODES.has(code)) {',
    to: 'if (code !== undefined && FINAL_DESCRIBE_CODES.has(code) && Date.now() < 0) {',
    tests: ['test/protection/schedule-describe.test.ts'],
  },
  {
    name: 'batch-memory-not-kept',
    why: 'every transfer makes its batch buffers afresh: 48-64 MiB of new external memory per express full in a long-lived agent, and full collections with it',
    file: 'ingest/batch-memory.ts',
    from: '    const i = this.idle.findIndex((b) => b.length === size);',
    to: '    const i = -1;',
    tests: ['test/ingest/pipeline.test.ts'],
    only: 'keeps batch memory',
  },
  {
    name: 'batch-memory-held-forever',
    why: 'idle batch buffers are never let go: an agent between backups holds up to 80 MiB it does not use',
    file: 'ingest/batch-memory.ts',
    from: '      this.timer = setTimeout(() => this.drop(), this.idleMs);',
    to: '      this.timer = setTimeout(() => undefined, this.idleMs);',
    tests: ['test/ingest/pipeline.test.ts'],
    only: 'keeps batch memory',
  },
  {
    name: 'locate-hint-ignored',
    why: 'a backup does not ask the host its last backup found the VM on until the agent list is in: one step more before every backup',
    file: 'workflows/locate.ts',
    from: "const hint = round === 0 && o.hint && patched('locate-hint-first') ? o.hint : undefined;",
    to: 'const hint = undefined as string | undefined;',
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'asked at once',
  },
  {
    name: 'locate-hint-kept-when-unlisted',
    why: 'a hint naming a host without an agent keeps its probe: a round that finds the VM nowhere waits out its locate timeout',
    file: 'workflows/locate.ts',
    from: '          if (!hosts.includes(hint)) hinted.cancel();\n',
    to: '',
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'asked at once',
  },
  {
    name: 'agents-listed-for-every-backup',
    why: 'every backup asks for the agent list a second time, also without a disk on an SMB share: one step and one workflow task more',
    file: 'workflows/backup-vm.ts',
    from: "facts.disks.some((d) => d.storage === 'smb' && d.fileServer !== undefined)",
    to: 'facts.disks.length > 0',
    tests: ['test/backup/faults.temporal.test.ts'],
    only: 'asked at once',
  },
  {
    name: 'protection-forgets-last-host',
    why: 'the protection does not remember where its last backup found the VM: no backup it starts has a hint',
    file: 'workflows/protection.ts',
    from: "if (job.kind !== 'restore' && backup.host) state.lastHost = backup.host;",
    to: 'void backup.host;',
    tests: ['test/backup/backup.temporal.test.ts'],
    only: 'asked again',
  },
];

function parseArgs(argv) {
  const args = { only: undefined, list: false, keep: false, check: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--only') args.only = argv[++i].split(',');
    else if (argv[i] === '--list') args.list = true;
    else if (argv[i] === '--keep') args.keep = true;
    else if (argv[i] === '--check') args.check = true;
    else throw new Error(`unknown argument ${argv[i]} (--only a,b | --list | --check | --keep)`);
  }
  return args;
}

/** The tree as git sees it (tracked and new files, not ignored ones), with dependencies linked. */
function copyTree() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-mutants-'));
  const files = execFileSync('git', ['ls-files', '-z', '-co', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
  for (const f of files) {
    const from = path.join(ROOT, f);
    if (!fs.existsSync(from)) continue; // deleted in the work tree
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.copyFileSync(from, path.join(dir, f));
  }
  for (const link of ['node_modules', '.tools']) if (fs.existsSync(path.join(ROOT, link))) fs.symlinkSync(path.join(ROOT, link), path.join(dir, link));
  return dir;
}

function run(cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, FORCE_COLOR: '0' } });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

function applyMutation(dir, m) {
  const file = path.join(dir, m.file);
  const text = fs.readFileSync(file, 'utf8');
  const count = text.split(m.from).length - 1;
  if (count !== 1) return { original: undefined, problem: `the text to replace occurs ${count} times in ${m.file}` };
  fs.writeFileSync(file, text.replace(m.from, () => m.to));
  return { original: text };
}

function failedTests(dir) {
  try {
    const report = JSON.parse(fs.readFileSync(path.join(dir, 'jest-mutant.json'), 'utf8'));
    const failed = [];
    for (const suite of report.testResults) {
      for (const t of suite.assertionResults) if (t.status === 'failed') failed.push(t.fullName);
      if (suite.status === 'failed' && !suite.assertionResults.some((t) => t.status === 'failed')) failed.push(`${path.relative(dir, suite.name)} (${suite.message.split('\n').find(Boolean)})`);
    }
    return failed;
  } catch {
    return [];
  }
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const chosen = args.only ? MUTATIONS.filter((m) => args.only.includes(m.name)) : MUTATIONS;
  if (args.only && chosen.length !== args.only.length) throw new Error(`unknown mutation in ${args.only.join(',')}; --list names them`);
  if (args.list) {
    for (const m of chosen) console.log(`${m.name}\n  ${m.why}\n  ${m.file} -> ${m.tests.join(' ')}${m.only ? ` -t '${m.only}'` : ''}`);
    return 0;
  }
  if (args.check) {
    const stale = chosen.filter((m) => fs.readFileSync(path.join(ROOT, m.file), 'utf8').split(m.from).length !== 2);
    for (const m of stale) console.log(`STALE    ${m.name}: its text is not in ${m.file} exactly once`);
    console.log(`${chosen.length - stale.length} of ${chosen.length} mutations apply`);
    return stale.length ? 1 : 0;
  }
  const dir = copyTree();
  console.log(`mutants in ${dir}`);
  // The unmutated tree must build: otherwise every mutant would look killed.
  const base = run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], dir);
  if (!base.ok) throw new Error(`the unmutated tree does not build:\n${base.out}`);
  const results = [];
  for (const m of chosen) {
    const t0 = Date.now();
    const { original, problem } = applyMutation(dir, m);
    let verdict;
    let detail = '';
    if (problem) {
      verdict = 'STALE';
      detail = problem;
    } else {
      const build = run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.json'], dir);
      if (!build.ok) {
        verdict = 'STALE';
        detail = `does not compile: ${build.out.split('\n').find((l) => l.includes('error')) ?? build.out.slice(0, 300)}`;
      } else {
        const jestArgs = ['node_modules/jest/bin/jest.js', '--ci', '--json', '--outputFile=jest-mutant.json', ...m.tests];
        if (m.only) jestArgs.push('-t', m.only);
        const tests = run(process.execPath, jestArgs, dir);
        const failed = failedTests(dir);
        verdict = tests.ok ? 'SURVIVED' : 'killed';
        detail = tests.ok ? 'every aimed test passed' : `by ${failed.length ? failed.join('; ') : tests.out.slice(-500)}`;
      }
      fs.writeFileSync(path.join(dir, m.file), original);
    }
    const secs = Math.round((Date.now() - t0) / 1000);
    results.push({ name: m.name, verdict, detail, secs });
    console.log(`${verdict.padEnd(8)} ${m.name} (${secs} s): ${detail}`);
  }
  if (!args.keep) fs.rmSync(dir, { recursive: true, force: true });
  const bad = results.filter((r) => r.verdict !== 'killed');
  console.log(`\n${results.length - bad.length} of ${results.length} mutations killed${bad.length ? `; not killed: ${bad.map((r) => `${r.name} (${r.verdict})`).join(', ')}` : ''}`);
  return bad.length ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (err) {
  console.error(`mutations: ${err.message}`);
  process.exitCode = 2;
}
