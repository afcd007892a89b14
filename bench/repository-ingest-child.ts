// Child processes of bench/repository-ingest: "server" runs the storage API on a repository,
// "agent" ingests a raw image through it. Each reports its wall time and peak RSS as JSON.
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

const [role, ...args] = process.argv.slice(2);
const run = role === 'server' ? server(args[0], Number(args[1])) : agent(args[0], args[1], args[2], args[3], args[4]);
run.catch((err) => {
  console.error(err);
  process.exit(1);
});
