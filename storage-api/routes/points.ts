// Recovery points and restore: list and read points, stream an index or a disk's bytes (every
// chunk checked against its digest), restore leases that keep a point from deletion.
import { promises as fs } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { RepositoryError, checkDataSourceId, checkDiskId, checkPointId } from '../../repository';
import { openDiskStream } from '../../recovery';
import type { Repository } from '../../repository';
import { API_PREFIX as P } from '../protocol';
import { digits } from './schemas';

type PointParams = { ds: string; pid: string };
type DiskParams = PointParams & { diskId: string };

/** A byte range from ?offset=&length= or a Range header ("bytes=START-END"). */
function byteRange(header: string | undefined, q: { offset?: string; length?: string }): { offset: number; length?: number } | undefined {
  if (q.offset !== undefined || q.length !== undefined) {
    return { offset: q.offset === undefined ? 0 : Number(q.offset), length: q.length === undefined ? undefined : Number(q.length) };
  }
  if (!header) return undefined;
  const m = /^bytes=(\d{1,15})-(\d{0,15})$/.exec(header.trim());
  if (!m) throw new RepositoryError('INVALID_ARGUMENT', `Range header ${header}`, 'one range as "bytes=START-END" (END inclusive, optional)');
  const offset = Number(m[1]);
  return { offset, length: m[2] ? Number(m[2]) - offset + 1 : undefined };
}

export function pointRoutes(app: FastifyInstance, repo: Repository): void {
  app.get<{ Params: { ds: string } }>(`${P}/datasources/:ds/points`, async (req) => ({ points: await repo.listPoints(checkDataSourceId(req.params.ds)) }));

  app.get<{ Params: PointParams }>(`${P}/datasources/:ds/points/:pid`, { config: { access: 'read' } }, async (req) => repo.getPoint(checkDataSourceId(req.params.ds), checkPointId(req.params.pid)));

  app.get<{ Params: DiskParams }>(`${P}/datasources/:ds/points/:pid/disks/:diskId/index`, { config: { access: 'read', baseIndex: true } }, async (req, reply) => {
    const { ds, pid, diskId } = req.params;
    checkDiskId(diskId);
    const point = await repo.getPoint(checkDataSourceId(ds), checkPointId(pid));
    if (!point.disks.some((d) => d.diskId === diskId)) throw new RepositoryError('NOT_FOUND', `recovery point ${ds}/${pid} has no disk ${diskId}`, `its disks: ${point.disks.map((d) => d.diskId).join(', ')}`);
    // Streamed: the index of a 64 TiB disk is gigabytes, not to be held in memory per request.
    const fh = await fs.open(repo.indexPath(ds, pid, diskId), 'r');
    let size: number;
    try {
      size = (await fh.stat()).size;
    } catch (err) {
      await fh.close();
      throw err;
    }
    reply.header('content-length', String(size));
    return reply.type('application/octet-stream').send(fh.createReadStream());
  });

  app.get<{ Params: DiskParams; Querystring: { offset?: string; length?: string } }>(`${P}/datasources/:ds/points/:pid/disks/:diskId/raw`, {
    config: { access: 'read', hint: 'a byte range as ?offset=&length= (bytes) or a "Range: bytes=START-END" header' },
    schema: { querystring: { type: 'object', additionalProperties: false, properties: { offset: digits, length: digits } } },
  }, async (req, reply) => {
    const { ds, pid, diskId } = req.params;
    const range = byteRange(req.headers.range, req.query);
    const { info, stream } = await openDiskStream(repo, checkDataSourceId(ds), checkPointId(pid), checkDiskId(diskId), range);
    reply.header('content-length', String(info.length));
    reply.header('x-virtual-size', String(info.virtualSize));
    if (range) reply.code(206).header('content-range', `bytes ${info.offset}-${info.offset + info.length - 1}/${info.virtualSize}`);
    return reply.type('application/octet-stream').send(stream);
  });

  app.post<{ Params: PointParams; Body: { ttlSeconds?: number | null } }>(`${P}/datasources/:ds/points/:pid/restore-leases`, {
    config: { hint: 'send {} or { "ttlSeconds": a whole number of seconds from 1 to 604800 (7 days) }' },
    schema: {
      body: { type: 'object', additionalProperties: false, properties: { ttlSeconds: { type: ['integer', 'null'], minimum: 1, maximum: 7 * 86400 } } },
    },
  }, async (req, reply) => {
    const ttl = req.body.ttlSeconds;
    return reply.code(201).send(await repo.beginRestore(checkDataSourceId(req.params.ds), checkPointId(req.params.pid), typeof ttl === 'number' ? ttl * 1000 : undefined));
  });

  app.delete<{ Params: { id: string } }>(`${P}/restore-leases/:id`, async (req, reply) => {
    await repo.endRestore(req.params.id);
    return reply.code(204).send();
  });
}
