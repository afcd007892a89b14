// Who may call what: every storage API request is authorised here and nowhere else. A route
// declares what it needs in its config (`access`); this hook checks the bearer token against it,
// and for an agent the per-job grant it sends (grants.ts).
//
//   any         any valid token (whoami: an agent checks its credential at start)
//   admin       an admin token: management, and what only the protection server does (sessions,
//               commits, point deletion, leases), which it does in process, not over HTTP
//   backup      an agent token + a backup grant: chunk uploads and the missing-chunk query, the
//               granted session's slots and indexes (disks and sizes as granted)
//   read        an agent token + a restore grant for this point (or a backup grant whose base is
//               this point, for its index only: `baseIndex`)
//   read-chunk  an agent token + a restore grant whose point names this chunk
// An admin token passes every check.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Repository } from '../repository';
import { fail } from './errors';
import { GRANT_HEADER, type GrantAuthority, type GrantClaims } from './grants';
import type { PointDigests } from './point-digests';
import type { TokenIdentity, TokenStore } from './tokens';

/** What a route needs from the caller's token. */
/** 'page': the protection page (routes/protection-page.ts), which checks its own admin token or session. */
export type RouteAccess = 'any' | 'admin' | 'backup' | 'read' | 'read-chunk' | 'page';

declare module 'fastify' {
  interface FastifyRequest {
    identity?: TokenIdentity;
    grant?: GrantClaims;
  }
  interface FastifyContextConfig {
    /** Default 'admin': a route says what an agent may do with it. */
    access?: RouteAccess;
    /** A 'read' route a backup grant may use on its base point (the index). */
    baseIndex?: boolean;
  }
}

/** How long a restore lease's liveness is trusted before it is looked at again (reads are per chunk). */
const LIVENESS_MS = 5_000;

/** `digests`: which chunks a point names, shared with the routes that check a body's digests. */
export function registerAuth(app: FastifyInstance, tokens: TokenStore, grants: GrantAuthority, repo: Repository, digests: PointDigests): void {
  const live = new Map<string, number>(); // "l:<leaseId>" → checked at
  const isLive = async (key: string, check: () => Promise<boolean>): Promise<boolean> => {
    const at = live.get(key);
    if (at !== undefined && Date.now() - at < LIVENESS_MS) return true;
    if (!(await check())) {
      live.delete(key);
      return false;
    }
    if (live.size > 10_000) live.clear();
    live.set(key, Date.now());
    return true;
  };

  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    if (req.routeOptions.config?.access === 'page') return;
    const auth = req.headers.authorization;
    if (!auth || !auth.startsWith('Bearer ')) {
      return fail(reply, 401, { error: 'UNAUTHENTICATED', message: 'no bearer token', hint: 'send "Authorization: Bearer <token>" with the token issued for this agent (hvprotect token issue --host HOST)' });
    }
    const identity = tokens.authenticate(auth.slice(7).trim());
    if (!identity) {
      return fail(reply, 401, { error: 'UNAUTHENTICATED', message: 'unknown or revoked token', hint: 'ask the administrator for a new token (hvprotect token issue --host HOST --rotate)' });
    }
    req.identity = identity;
    if (identity.role === 'admin') return;
    const cfg = req.routeOptions.config;
    const needed: RouteAccess = cfg?.access ?? 'admin';
    if (needed === 'any') return;
    const refuse = (message: string, hint = 'an agent reaches the storage API only for the job a protection server granted it; management calls need an admin token') =>
      fail(reply, 403, { error: 'FORBIDDEN', message: `${identity.name}: ${message}`, hint });
    if (needed === 'admin') return refuse('this call needs an admin token');

    const header = req.headers[GRANT_HEADER];
    if (typeof header !== 'string') return refuse(`no job grant (${GRANT_HEADER}) sent: an agent token alone reaches nothing`);
    const verdict = grants.verify(header);
    if ('refused' in verdict) return refuse(`refused ${verdict.refused}`);
    const g = verdict.claims;
    req.grant = g;
    const params = (req.params ?? {}) as Record<string, string | undefined>;
    const query = (req.query ?? {}) as Record<string, string | undefined>;

    if (needed === 'backup') {
      if (g.kind !== 'backup') return refuse(`a ${g.kind} grant does not allow uploads (job ${g.job})`);
      if (params.sid !== undefined && params.sid !== g.sid) return refuse(`the grant of job ${g.job} is for session ${g.sid}, not ${params.sid}`);
      if (params.diskId !== undefined) {
        const max = Object.prototype.hasOwnProperty.call(g.disks, params.diskId) ? g.disks[params.diskId] : undefined;
        if (max === undefined) return refuse(`the grant of job ${g.job} does not cover disk ${params.diskId}`);
        if (query.virtualSize !== undefined && !(Number(query.virtualSize) <= max)) {
          return refuse(`disk ${params.diskId} is ${max} bytes as its host reported it; ${query.virtualSize} is refused`);
        }
        if (query.base !== undefined && query.base !== 'none' && query.base !== g.base) return refuse(`the grant of job ${g.job} allows base ${g.base ?? 'none'}, not ${query.base}`);
      }
      // Looked at on every request (a small file): a committed or aborted session ends its grant at once.
      if (!(await repo.getSession(g.sid).then((s) => s.dataSource === g.ds, () => false))) {
        return refuse(`session ${g.sid} of job ${g.job} has ended (committed or aborted)`, 'the job is over: its grant ended with it');
      }
      return;
    }

    // read, read-chunk
    if (g.kind === 'backup') {
      const baseRead = needed === 'read' && cfg?.baseIndex === true && g.base !== null && params.ds === g.ds && params.pid === g.base;
      if (!baseRead) return refuse(`a backup grant (job ${g.job}) reads only its base point's index`);
      return;
    }
    if (params.ds !== undefined && (params.ds !== g.ds || params.pid !== g.pid)) {
      return refuse(`the grant of job ${g.job} is for ${g.ds}/${g.pid}, not ${params.ds}/${params.pid ?? ''}`);
    }
    if (!(await isLive(`l:${g.lease}`, () => repo.hasRestoreLease(g.lease, g.ds, g.pid)))) {
      return refuse(`the restore lease of job ${g.job} has ended`, 'the job is over: its grant ended with it');
    }
    if (needed === 'read-chunk') {
      const digest = params.digest;
      if (typeof digest !== 'string' || !(await digests.has(g.ds, g.pid, digest))) {
        return refuse(`chunk ${String(digest)} is not part of ${g.ds}/${g.pid}, the point job ${g.job} may read`);
      }
    }
  });
}
