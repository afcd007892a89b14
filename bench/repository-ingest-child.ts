// Child processes of bench/repository-ingest: "server" runs the storage API on a repository,
// "agent" ingests a raw image through it. Each reports its wall time and peak RSS as JSON.
import '../workers/young-generation'; // as in `hvprotect server` and `agent` (client/cli.ts)
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
// Each role loads only what it uses: an agent never loads fastify or zstd.

async function server(repoDir: string, chunkSize: number): Promise<void> {
  const { Repository } = await import('../repository');
  const { TokenStore, startStorageApi } = await import('../storage-api');
  const threads = process.env.HVP_ENCODER_THREADS;
  const repository = await Repository.open(repoDir, { create: true, defaultChunkSize: chunkSize, encoderThreads: threads === undefined ? undefined : Number(threads) });
  const tokens = await TokenStore.open();
  // The admin token does what the protection server does in process (sessions, commits); the
  // agent token with a job grant uploads, as a host agent does.
  const agentToken = await tokens.issue('bench-agent', 'agent');
  const token = await tokens.issue('bench-admin', 'admin');
  const api = await startStorageApi({ repository, tokens, host: '127.0.0.1', port: 0 });
  process.send!({ url: api.url, token, agentToken });
  process.on('message', async (m) => {
    if (m === 'stop') {
      await api.close();
      await repository.close();
      process.send!({ maxRssKiB: process.resourceUsage().maxRSS, cpu: process.cpuUsage(), faults: process.resourceUsage().minorPageFault }, () => process.exit(0));
    }
  });
}

/** `tokens`: "ADMIN[,AGENT]": with an agent token, the upload runs as an agent's, under a job grant. */
async function agent(url: string, tokens: string, image: string, rangesFile: string, basePoint: string): Promise<void> {
  const start = process.hrtime.bigint();
  const { StorageClient } = await import('../storage-api/client');
  const { allSlots, ingestDisk, openRawFileReader, slotsOfRanges } = await import('../ingest');
  const [token, agentToken] = tokens.split(',');
  const client = new StorageClient(url, token);
  const reader = await openRawFileReader(image);
  const { virtualSize } = reader;
  const ranges = rangesFile !== '-' ? (JSON.parse(await fs.readFile(rangesFile, 'utf8')) as Array<{ offset: number; length: number }>) : undefined;
  const session = await client.beginSession('bench-vm', basePoint !== '-' ? { basePoint } : {});
  const env = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);
  const uploader = agentToken
    ? new StorageClient(url, agentToken).withGrant(await client.issueGrant({ sessionId: session.sessionId, disks: [{ diskId: 'disk0', virtualSize }] }))
    : client;
  const progress = await ingestDisk({
    reader, storage: uploader, sessionId: session.sessionId, diskId: 'disk0', chunkSize: session.chunkSize,
    slots: ranges ? slotsOfRanges(ranges, session.chunkSize, virtualSize) : allSlots(virtualSize, session.chunkSize),
    // The defaults unless overridden (for tuning runs).
    tuning: {
      ...(env('HVP_BENCH_CONCURRENCY') ? { uploadConcurrency: env('HVP_BENCH_CONCURRENCY') } : {}),
      ...(env('HVP_BENCH_IN_FLIGHT') ? { batchesInFlight: env('HVP_BENCH_IN_FLIGHT') } : {}),
      ...(env('HVP_BENCH_BATCH_MIB') ? { batchBytes: env('HVP_BENCH_BATCH_MIB')! * 1024 * 1024 } : {}),
    },
  });
  const ingestMs = Number(process.hrtime.bigint() - start) / 1e6;
  const manifest = await client.commitPoint(session.sessionId, {
    kind: ranges ? 'express-full' : 'initial-replica', mode: 'online',
    disks: [{ diskId: 'disk0', fileName: path.basename(image), virtualSize }],
  });
  await reader.close();
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  process.send!({ wallMs, ingestMs, cpu: process.cpuUsage(), faults: process.resourceUsage().minorPageFault, maxRssKiB: process.resourceUsage().maxRSS, pointId: manifest.pointId, progress, ownedBytes: manifest.ownedBytes }, () => process.exit(0));
}

/**
 * The work any design does that hashes every chunk on both sides and compresses it with zstd
 * level 1, and nothing else: the image read from the page cache in chunks, zero chunks skipped,
 * each other chunk SHA-256'd twice and compressed, on two threads (one per core), no HTTP, no
 * files written. Its wall time is a floor for hvprotect's ingest on this machine.
 */
async function floor(image: string, chunkSize: number, threads: number): Promise<void> {
  const { Worker } = await import('node:worker_threads');
  const start = process.hrtime.bigint();
  const source = `
    const { workerData, parentPort } = require('node:worker_threads');
    const fs = require('node:fs');
    const { createHash } = require('node:crypto');
    const zstd = require(workerData.zstdBindingPath);
    const cctx = new zstd.CCtx();
    const { image, chunkSize, id, threads, level } = workerData;
    const fd = fs.openSync(image, 'r');
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.allocUnsafe(chunkSize);
    const out = Buffer.allocUnsafe(zstd.compressBound(chunkSize));
    const zero = Buffer.alloc(chunkSize);
    let chunks = 0, stored = 0;
    for (let i = id; i * chunkSize < size; i += threads) {
      const n = fs.readSync(fd, buf, 0, chunkSize, i * chunkSize);
      const c = buf.subarray(0, n);
      if (c.equals(zero.subarray(0, n))) continue;
      createHash('sha256').update(c).digest();
      createHash('sha256').update(c).digest();
      stored += Math.min(n, cctx.compress(out, c, level));
      chunks++;
    }
    fs.closeSync(fd);
    parentPort.postMessage({ chunks, stored });
  `;
  const { ZSTD_LEVEL } = await import('../repository/codec');
  const results = await Promise.all(Array.from({ length: threads }, (_, id) => new Promise<{ chunks: number; stored: number }>((resolve, reject) => {
    const w = new Worker(source, { eval: true, workerData: { image, chunkSize, id, threads, level: ZSTD_LEVEL, zstdBindingPath: require.resolve('zstd-napi/binding') } });
    w.once('message', resolve);
    w.once('error', reject);
  })));
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  process.send!({ wallMs, cpu: process.cpuUsage(), maxRssKiB: process.resourceUsage().maxRSS, chunks: results.reduce((a, r) => a + r.chunks, 0), stored: results.reduce((a, r) => a + r.stored, 0) }, () => process.exit(0));
}

const [role, ...args] = process.argv.slice(2);
const run = role === 'server' ? server(args[0], Number(args[1])) : role === 'floor' ? floor(args[0], Number(args[1]), Number(args[2])) : agent(args[0], args[1], args[2], args[3], args[4]);
run.catch((err) => {
  console.error(err);
  process.exit(1);
});
