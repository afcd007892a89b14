// Who may call what: every storage API request is authorised here and nowhere else. A route
// declares what it needs in its config (`access`); this hook checks the bearer token against it.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { fail } from './errors';
import type { TokenIdentity, TokenStore } from './tokens';

/** What a route needs from the caller's token. */
export type RouteAccess = 'agent' | 'admin';

declare module 'fastify' {
  interface FastifyRequest {
    identity?: TokenIdentity;
  }
  interface FastifyContextConfig {
    /** Default 'agent': any valid token. */
    access?: RouteAccess;
  }
}

export function registerAuth(app: FastifyInstance, tokens: TokenStore): void {
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    const auth = req.headers.authorization;
    if (!auth || !auth.startsWith('Bearer ')) {
      return fail(reply, 401, { error: 'UNAUTHENTICATED', message: 'no bearer token', hint: 'send "Authorization: Bearer <token>" with the token issued for this agent (hvprotect token issue)' });
    }
    const identity = tokens.authenticate(auth.slice(7).trim());
    if (!identity) {
      return fail(reply, 401, { error: 'UNAUTHENTICATED', message: 'unknown or revoked token', hint: 'ask the administrator for a new token (hvprotect token issue --host <host> --rotate)' });
    }
    req.identity = identity;
    const needed = req.routeOptions.config?.access ?? 'agent';
    if (needed === 'admin' && identity.role !== 'admin') {
      return fail(reply, 403, { error: 'FORBIDDEN', message: `${identity.name} holds an agent token; this call needs an admin token`, hint: 'use an admin token for management calls' });
    }
  });
}
