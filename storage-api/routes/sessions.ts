// Backup sessions: begin, look, abort; index slots and whole indexes; commit as a recovery point.
import type { FastifyInstance } from 'fastify';
import { RepositoryError, checkDataSourceId, checkDiskId, checkPointId } from '../../repository';
import type { CommitPointInput, Repository } from '../../repository';
import { API_PREFIX as P, MAX_FULL_INDEX_BODY, MAX_PATCH_BODY, decodeSlotPatch } from '../protocol';
import { digits, text } from './schemas';

const KINDS = ['initial-replica', 'express-full', 'consistency-check'];
const count = { type: 'number', minimum: 0 } as const;
const jsonObject = { type: 'object' } as const;

/** The body of a commit: RecoveryPointManifest's inputs (repository/manifest.ts checks the depth). */
const commitBody = {
  type: 'object',
  required: ['kind', 'mode', 'disks'],
  additionalProperties: false,
  properties: {
    kind: { enum: KINDS },
    mode: { enum: ['online', 'offline'] },
    createdAt: text(64),
    disks: {
      type: 'array',
      minItems: 1,
      maxItems: 4096,
      items: {
        type: 'object',
        required: ['diskId', 'fileName', 'virtualSize'],
        additionalProperties: false,
        properties: { diskId: text(64), fileName: text(1024), virtualSize: { type: 'integer', minimum: 1 } },
      },
    },
    backup: {
      type: 'object',
      required: ['changeTracking', 'modeReasons', 'transfer'],
      additionalProperties: false,
      properties: {
        workflowId: text(1024),
        changeTracking: { type: 'object', additionalProperties: text(1024) },
        modeReasons: { type: 'array', maxItems: 256, items: text(1024) },
        downtimeMs: count,
        consistency: {
          type: 'object',
          required: ['achieved'],
          additionalProperties: false,
          properties: { achieved: { enum: ['application-consistent', 'crash-consistent'] }, reason: text(1024) },
        },
        transfer: {
          type: 'array',
          maxItems: 4096,
          items: {
            type: 'object',
            required: ['diskId', 'kind', 'bytesRead', 'bytesSent', 'changedChunks', 'durationMs'],
            additionalProperties: false,
            properties: {
              diskId: text(64), kind: { enum: KINDS }, fallbackReason: text(1024), bytesRead: count, bytesSent: count, changedChunks: count, durationMs: count,
            },
          },
        },
      },
    },
    vm: {
      type: 'object',
      additionalProperties: false,
      properties: { vmId: text(256), name: text(256), host: text(256), cluster: text(256), configPath: text(4096), config: jsonObject },
    },
    annotations: jsonObject,
  },
} as const;

export function sessionRoutes(app: FastifyInstance, repo: Repository): void {
  app.post<{ Body: { dataSource: string; basePoint?: string | null; chunkSize?: number } }>(`${P}/sessions`, {
    config: { hint: 'send { "dataSource": ID, "basePoint"?: POINT ID, "chunkSize"?: a power of two in bytes }' },
    schema: {
      body: {
        type: 'object',
        required: ['dataSource'],
        additionalProperties: false,
        properties: { dataSource: text(256), basePoint: { type: ['string', 'null'], maxLength: 64 }, chunkSize: { type: 'integer' } },
      },
    },
  }, async (req, reply) => {
    const { dataSource, basePoint, chunkSize } = req.body;
    const s = await repo.beginSession(checkDataSourceId(dataSource), { basePoint: basePoint === undefined || basePoint === null ? undefined : checkPointId(basePoint), chunkSize });
    return reply.code(201).send(s);
  });

  app.get<{ Params: { sid: string } }>(`${P}/sessions/:sid`, { config: { access: 'backup' } }, async (req) => repo.getSession(req.params.sid));

  app.delete<{ Params: { sid: string } }>(`${P}/sessions/:sid`, async (req, reply) => {
    await repo.getSession(req.params.sid);
    await repo.abortSession(req.params.sid);
    return reply.code(204).send();
  });

  app.post<{ Params: { sid: string; diskId: string }; Querystring: { virtualSize: string; base?: string } }>(`${P}/sessions/:sid/disks/:diskId/slots`, {
    bodyLimit: MAX_PATCH_BODY,
    config: { access: 'backup', hint: 'query ?virtualSize=BYTES[&base=POINT ID|none]; body: 40-byte records of u64 LE slot + 32-byte digest' },
    schema: {
      querystring: { type: 'object', required: ['virtualSize'], additionalProperties: false, properties: { virtualSize: digits, base: text(64) } },
    },
  }, async (req) => {
    const { sid, diskId } = req.params;
    if (!Buffer.isBuffer(req.body)) throw new RepositoryError('INVALID_ARGUMENT', 'slot patch body must be application/octet-stream');
    let patch: { slots: number[]; digests: Buffer };
    try {
      patch = decodeSlotPatch(req.body);
    } catch (err) {
      throw new RepositoryError('INVALID_ARGUMENT', err instanceof Error ? err.message : String(err), 'send 40-byte records: u64 LE slot + 32-byte digest');
    }
    const { virtualSize, base } = req.query;
    const basePoint = base === undefined ? undefined : base === 'none' ? null : checkPointId(base);
    return repo.patchIndex(sid, checkDiskId(diskId), { virtualSize: Number(virtualSize), basePoint }, patch.slots, patch.digests);
  });

  app.put<{ Params: { sid: string; diskId: string }; Querystring: { virtualSize: string } }>(`${P}/sessions/:sid/disks/:diskId/index`, {
    bodyLimit: MAX_FULL_INDEX_BODY,
    config: { access: 'backup', hint: 'query ?virtualSize=BYTES; body: 32 bytes per slot of the disk, in order' },
    schema: { querystring: { type: 'object', required: ['virtualSize'], additionalProperties: false, properties: { virtualSize: digits } } },
  }, async (req) => {
    if (!Buffer.isBuffer(req.body)) throw new RepositoryError('INVALID_ARGUMENT', 'index body must be application/octet-stream');
    return repo.putFullIndex(req.params.sid, checkDiskId(req.params.diskId), Number(req.query.virtualSize), req.body);
  });

  app.post<{ Params: { sid: string }; Body: CommitPointInput }>(`${P}/sessions/:sid/commit`, {
    config: { hint: 'send { "kind": initial-replica | express-full | consistency-check, "mode": online | offline, "disks": [{ "diskId", "fileName", "virtualSize" }], "createdAt"?, "backup"?, "vm"?, "annotations"? }' },
    schema: { body: commitBody },
  }, async (req, reply) => reply.code(201).send(await repo.commitPoint(req.params.sid, req.body)));
}
