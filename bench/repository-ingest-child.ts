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
  const token = await tokens.issue('bench-agent', 'agent');
  const api = await startStorageApi({ repository, tokens, host: '127.0.0.1', port: 0 });
  process.send!({ url: api.url, token });
  process.on('message', async (m) => {
    if (m === 'stop') {
      await api.close();
      await repository.close();
      process.send!({ maxRssKiB: process.resourceUsage().maxRSS, cpu: process.cpuUsage(), faults: process.resourceUsage().minorPageFault }, () => process.exit(0));
    }
  });
}

async function agent(url: string, token: string, image: string, rangesFile: string, basePoint: string): Promise<void> {
  const start = process.hrtime.bigint();
  const { StorageClient } = await import('../storage-api/client');
  const { ingestDisk } = await import('../storage-api/ingest');
  const client = new StorageClient(url, token);
  const fh = await fs.open(image, 'r');
  const virtualSize = (await fh.stat()).size;
  const ranges = rangesFile !== '-' ? (JSON.parse(await fs.readFile(rangesFile, 'utf8')) as Array<{ offset: number; length: number }>) : undefined;
  const session = await client.beginSession('bench-vm', basePoint !== '-' ? { basePoint } : {});
  const progress = await ingestDisk({
    client, sessionId: session.sessionId, diskId: 'disk0', virtualSize, chunkSize: session.chunkSize,
    read: async (offset, length) => {
      const buf = Buffer.allocUnsafe(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return bytesRead === length ? buf : buf.subarray(0, bytesRead);
    },
    changedRanges: ranges,
    // The defaults unless overridden (for tuning runs).
    concurrency: process.env.HVP_BENCH_CONCURRENCY ? Number(process.env.HVP_BENCH_CONCURRENCY) : undefined,
    batchesInFlight: process.env.HVP_BENCH_IN_FLIGHT ? Number(process.env.HVP_BENCH_IN_FLIGHT) : undefined,
    batchBytes: process.env.HVP_BENCH_BATCH_MIB ? Number(process.env.HVP_BENCH_BATCH_MIB) * 1024 * 1024 : undefined,
  });
  const ingestMs = Number(process.hrtime.bigint() - start) / 1e6;
  const manifest = await client.commitPoint(session.sessionId, {
    kind: ranges ? 'express-full' : 'initial-replica', mode: 'online',
    disks: [{ diskId: 'disk0', fileName: path.basename(image), virtualSize }],
  });
  await fh.close();
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  process.send!({ wallMs, ingestMs, cpu: process.cpuUsage(), faults: process.resourceUsage().minorPageFault, maxRssKiB: process.resourceUsage().maxRSS, pointId: manifest.pointId, progress, ownedBytes: manifest.ownedBytes }, () => process.exit(0));
}

const [role, ...args] = process.argv.slice(2);
const run = role === 'server' ? server(args[0], Number(args[1])) : agent(args[0], args[1], args[2], args[3], args[4]);
run.catch((err) => {
  console.error(err);
  process.exit(1);
});
