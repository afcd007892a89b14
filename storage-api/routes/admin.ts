// Management (admin token): agent tokens, shadow storage as vssadmin has it, point deletion,
// retention, the deletion log, GC and verify.
import type { FastifyInstance } from 'fastify';
import { RepositoryError, checkDataSourceId, checkDiskId, collectGarbage, verifyRepository } from '../../repository';
import type { Repository } from '../../repository';
import { API_PREFIX as P } from '../protocol';
import type { GrantAuthority } from '../grants';
import type { TokenRole, TokenStore } from '../tokens';
import { text } from './schemas';

const SIZE_HINT = 'maxSize as text: "20GB", "15%", "1073741824" or "UNBOUNDED"';
const maxSize = { type: ['string', 'null'], maxLength: 64 } as const;

export function adminRoutes(app: FastifyInstance, repo: Repository, tokens: TokenStore, grants: GrantAuthority): void {
  const admin = { access: 'admin' } as const;

  // A job grant for an agent run by hand (an import from a host, a benchmark): a backup grant for
  // an open session and the disks named, or a restore grant for a point under a live lease. The
  // protection server's own jobs mint theirs in process.
  app.post<{ Body: { sessionId?: string; disks?: Array<{ diskId: string; virtualSize: number }>; leaseId?: string } }>(`${P}/admin/grants`, {
    config: { ...admin, hint: 'send { "sessionId", "disks": [{ "diskId", "virtualSize" }] } for a backup, or { "leaseId" } for a restore' },
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        properties: {
          sessionId: text(64),
          leaseId: text(64),
          disks: { type: 'array', maxItems: 4096, items: { type: 'object', required: ['diskId', 'virtualSize'], additionalProperties: false, properties: { diskId: text(64), virtualSize: { type: 'integer', minimum: 1 } } } },
        },
      },
    },
  }, async (req, reply) => {
    const { sessionId, disks, leaseId } = req.body;
    const job = `admin:${req.identity?.name ?? 'admin'}`;
    if (sessionId !== undefined && disks !== undefined && leaseId === undefined) {
      const s = await repo.getSession(sessionId);
      for (const d of disks) checkDiskId(d.diskId);
      return reply.code(201).send({ grant: grants.forSession({ job, dataSource: s.dataSource, sessionId, basePoint: s.basePoint ?? null, disks }) });
    }
    if (leaseId !== undefined && sessionId === undefined) {
      const lease = (await repo.listRestoreLeases()).find((l) => l.leaseId === leaseId);
      if (!lease) throw new RepositoryError('NOT_FOUND', `no live restore lease ${leaseId}`, 'take a lease first (POST .../restore-leases)');
      return reply.code(201).send({ grant: grants.forRestore({ job, dataSource: lease.dataSource, pointId: lease.pointId, leaseId, expiresAt: lease.expiresAt }) });
    }
    throw new RepositoryError('INVALID_ARGUMENT', 'a grant is for a session (sessionId + disks) or a restore lease (leaseId)', 'send { "sessionId", "disks" } or { "leaseId" }');
  });

  app.post<{ Body: { name: string; role?: TokenRole; rotate?: boolean } }>(`${P}/admin/tokens`, {
    config: { ...admin, hint: 'send { "name": HOST OR PERSON, "role"?: "agent" | "admin", "rotate"?: true }' },
    schema: { body: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: text(128), role: { enum: ['agent', 'admin'] }, rotate: { type: 'boolean' } } } },
  }, async (req, reply) => {
    const role = req.body.role ?? 'agent';
    const token = await tokens.issue(req.body.name, role, { rotate: req.body.rotate === true });
    return reply.code(201).send({ name: req.body.name, role, token });
  });
  app.get(`${P}/admin/tokens`, { config: admin }, async () => ({ tokens: tokens.list() }));
  app.delete<{ Params: { name: string } }>(`${P}/admin/tokens/:name`, { config: admin }, async (req, reply) => {
    await tokens.revoke(req.params.name);
    return reply.code(204).send();
  });

  app.get<{ Querystring: { dataSource?: string } }>(`${P}/admin/shadowstorage`, {
    config: { ...admin, hint: 'query ?dataSource=ID (optional)' },
    schema: { querystring: { type: 'object', additionalProperties: false, properties: { dataSource: text(256) } } },
  }, async (req) => {
    const ds = req.query.dataSource;
    return { shadowStorage: await repo.listShadowStorage(ds === undefined ? undefined : checkDataSourceId(ds)) };
  });
  app.post<{ Body: { dataSource: string; maxSize?: string | null } }>(`${P}/admin/shadowstorage`, {
    config: { ...admin, hint: `send { "dataSource": ID, "maxSize"?: ... }; ${SIZE_HINT}` },
    schema: { body: { type: 'object', required: ['dataSource'], additionalProperties: false, properties: { dataSource: text(256), maxSize } } },
  }, async (req, reply) => reply.code(201).send(await repo.addShadowStorage(checkDataSourceId(req.body.dataSource), req.body.maxSize ?? undefined)));
  app.patch<{ Params: { ds: string }; Body: { maxSize?: string | null; maxPoints?: number; retentionRangeDays?: number | null } }>(`${P}/admin/shadowstorage/:ds`, {
    config: { ...admin, hint: `send any of { "maxSize", "maxPoints": 1..448, "retentionRangeDays": days or null }; ${SIZE_HINT}` },
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        properties: { maxSize, maxPoints: { type: 'integer' }, retentionRangeDays: { type: ['integer', 'null'] } },
      },
    },
  }, async (req) => {
    const { maxSize: size, maxPoints, retentionRangeDays } = req.body;
    return repo.resizeShadowStorage(checkDataSourceId(req.params.ds), { maxSize: size ?? undefined, maxPoints, retentionRangeDays });
  });
  app.post<{ Params: { ds: string } }>(`${P}/admin/datasources/:ds/delete-oldest`, { config: admin }, async (req) => repo.deleteOldestPoint(checkDataSourceId(req.params.ds)));
  app.post<{ Params: { ds: string } }>(`${P}/admin/datasources/:ds/enforce-retention`, { config: admin }, async (req) => ({ deleted: await repo.enforceRetention(checkDataSourceId(req.params.ds)) }));
  app.get(`${P}/admin/deletions`, { config: admin }, async () => ({ deletions: await repo.readDeletionLog() }));
  app.post(`${P}/admin/gc`, { config: admin }, async () => collectGarbage(repo));
  app.post<{ Body: { readData?: boolean; quarantine?: boolean; dataSource?: string } }>(`${P}/admin/verify`, {
    config: { ...admin, hint: 'send { "readData"?: boolean, "quarantine"?: boolean, "dataSource"?: ID }' },
    schema: {
      body: { type: 'object', additionalProperties: false, properties: { readData: { type: 'boolean' }, quarantine: { type: 'boolean' }, dataSource: text(256) } },
    },
  }, async (req) => {
    const { readData = false, quarantine, dataSource } = req.body;
    return verifyRepository(repo, { readData, quarantine: readData && quarantine !== false, dataSource: dataSource === undefined ? undefined : checkDataSourceId(dataSource) });
  });
}
