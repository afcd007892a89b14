// Child process of bench/restore: the agent's whole-disk restore data path (recovery's
// PointDiskReader over the storage API, restorePointDisk into a sparse raw file), as the
// restoreDisks activity runs it, without Temporal around it. Reports its wall time as JSON.
async function main(url: string, token: string, pointId: string, file: string, virtualSize: number, inFlight: number): Promise<void> {
  const { StorageClient } = await import('../storage-api/client');
  const { PointDiskReader, openDiskWriter, restorePointDisk, storageApiChunkSource } = await import('../recovery');
  const client = new StorageClient(url, token);
  await new Promise<void>((resolve) => {
    process.once('message', () => resolve());
    process.send!({ ready: true });
  });
  const start = process.hrtime.bigint();
  const source = storageApiChunkSource(client, { dataSource: 'bench-vm', pointId }, 'disk0');
  // --per-chunk: the data path before batched reads (one GET per chunk, decoded and hashed by the
  // server, hashed again here on the main thread), for a before/after in the same run.
  const reader = await PointDiskReader.open(perChunk ? { ...source, readChunks: undefined } : source);
  const writer = await openDiskWriter(file, 'raw', virtualSize, false);
  const done = await restorePointDisk(reader, writer, { inFlight });
  await writer.close();
  const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  process.send!({ wallMs, bytesWritten: done.bytesWritten, cpu: process.cpuUsage(), maxRssKiB: process.resourceUsage().maxRSS }, () => process.exit(0));
}

const [url, token, pointId, file, size, inFlight, mode] = process.argv.slice(2);
const perChunk = mode === 'per-chunk';
main(url, token, pointId, file, Number(size), Number(inFlight)).catch((err) => {
  console.error(err);
  process.exit(1);
});
