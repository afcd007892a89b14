// The storage API: host agents push chunks and indexes and commit recovery points; restores
// read them back; admins manage tokens, shadow storage, GC and verify. One route module per
// concept (routes/), each body and query described by a JSON schema that fastify validates
// (no coercion in bodies); every call authorised in auth.ts; every refusal shaped in errors.ts;
// ids from URLs go through the repository's id checks before any path use.
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Repository } from '../repository';
import { registerAuth } from './auth';
import { readBinaryBody } from './binary-body';
import { GrantAuthority } from './grants';
import { PointDigests } from './point-digests';
import { registerBounds, type StorageApiBounds } from './bounds';
import { clientErrorHandler, errorHandler, fail, frameworkError } from './errors';
import { API_PREFIX } from './protocol';
import { adminRoutes } from './routes/admin';
import { chunkRoutes } from './routes/chunks';
import { pointRoutes } from './routes/points';
import { sessionRoutes } from './routes/sessions';
import type { StorageServerTls } from './tls';
import type { TokenStore } from './tokens';
import { registerProtectionPage, type PageSource } from './routes/protection-page';

export interface StorageApiOptions {
  repository: Repository;
  tokens: TokenStore;
  /** Verifies the per-job grants agents send (grants.ts); default a key of this process only. */
  grants?: GrantAuthority;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  logger?: Logger;
  /** Serve HTTPS (and require client certificates when clientCa is set). */
  tls?: StorageServerTls;
  /** Requests in flight per credential and the minimum body rate (bounds.ts). */
  bounds?: StorageApiBounds;
  /** Serve the protection page at /protection from this source (routes/protection-page.ts). */
  protectionPage?: PageSource;
}

export interface StorageApi {
  url: string;
  close(): Promise<void>;
  /** Mints the grants this API accepts (the protection server's activities; tests). */
  grants: GrantAuthority;
  /** The fastify instance (tests inject requests). */
  app: FastifyInstance;
}

export function buildStorageApi(opts: StorageApiOptions): FastifyInstance {
  const { repository: repo, tokens } = opts;
  const grants = opts.grants ?? GrantAuthority.ephemeral();
  const app: FastifyInstance = Fastify({
    loggerInstance: opts.logger as FastifyBaseLogger | undefined,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // A string is not a number, and an unknown property is refused, not dropped.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } },
    // Long uploads on keep-alive connections from many agents.
    keepAliveTimeout: 65_000,
    requestTimeout: 10 * 60_000,
    frameworkErrors: frameworkError,
    clientErrorHandler,
    ...(opts.tls
      ? {
          https: {
            cert: opts.tls.cert,
            key: opts.tls.key,
            minVersion: 'TLSv1.2' as const,
            ...(opts.tls.clientCa ? { ca: opts.tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
          },
        }
      : {}),
  });

  app.addContentTypeParser('application/octet-stream', (req, payload, done) => readBinaryBody(req, payload, done));
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((req, reply) => fail(reply, 404, { error: 'NO_SUCH_ENDPOINT', message: `${req.method} ${req.url.split('?')[0]} is not a storage API endpoint`, hint: `endpoints live under ${API_PREFIX}/` }));
  // One cache of which chunks each point names: the grant check and the batched read share it.
  const pointDigests = new PointDigests(repo);
  registerAuth(app, tokens, grants, repo, pointDigests);
  registerBounds(app, opts.bounds);
  // A JSON route called without a body is called with no options: its schema decides.
  app.addHook('preValidation', async (req) => {
    if (req.body === undefined && req.routeOptions.schema?.body !== undefined) req.body = {};
  });

  // Who the caller is: an agent checks its credential with this at start (any valid token).
  app.get(`${API_PREFIX}/whoami`, { config: { access: 'any' } }, async (req) => ({ name: req.identity!.name, role: req.identity!.role }));
  chunkRoutes(app, repo, pointDigests);
  sessionRoutes(app, repo);
  pointRoutes(app, repo);
  adminRoutes(app, repo, tokens, grants);
  if (opts.protectionPage) registerProtectionPage(app, tokens, opts.protectionPage);
  return app;
}

/** Starts the storage API on host:port (the protection server embeds this). */
export async function startStorageApi(opts: StorageApiOptions): Promise<StorageApi> {
  const grants = opts.grants ?? GrantAuthority.ephemeral();
  const app = buildStorageApi({ ...opts, grants });
  const host = opts.host ?? '127.0.0.1';
  await app.listen({ host, port: opts.port ?? 0 });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  const shownHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    url: `${opts.tls ? 'https' : 'http'}://${shownHost}:${port}`,
    app,
    grants,
    close: () => app.close(),
  };
}
