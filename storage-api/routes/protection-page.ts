// The protection page: `/protection` on the storage API's address, read-only, server-rendered
// with Eta templates (no front-end build step). Every protected VM of this server with its group,
// status colour, last point, next run, shadow storage use as a bar and a link to its job in the
// Temporal Web UI; a VM's page with its recovery points (kind, mode, stored bytes as a chart,
// downtime of offline backups).
//
// Who may look: an admin token, as `Authorization: Bearer` or through the login form (an
// HttpOnly, SameSite=Strict session cookie of this process, 8 hours); with mutual TLS the client
// certificate is checked by the TLS layer before any of this.
import { randomBytes } from 'node:crypto';
import { parse as parseQuery } from 'node:querystring';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Eta } from 'eta';
import type { TokenStore } from '../tokens';
import type { StatusLevel } from '../../protection/status';
import { bytes } from '../../client/format';

export const PAGE_PREFIX = '/protection';

export interface PageVm {
  dataSource: string;
  vm: string;
  group?: string;
  level: StatusLevel;
  reason: string;
  lastPointAt?: string;
  nextRun?: string;
  paused: boolean;
  shadowStorage: { usedBytes: number; maximumBytes: number | null; points: number };
  job?: { workflowId: string; running: boolean; link?: string };
}

export interface PagePoint {
  pointId: string;
  createdAt: string;
  kind: string;
  mode: string;
  storedBytes: number;
  downtimeMs?: number;
}

export interface PageSource {
  serverId: string;
  vms(): Promise<PageVm[]>;
  points(dataSource: string): Promise<{ vm: PageVm; points: PagePoint[] } | undefined>;
}

const SESSION_MS = 8 * 3_600_000;
const COOKIE = 'hvp_page';

const LAYOUT = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title><%= it.title %> · hvprotect</title>
<meta name="viewport" content="width=device-width">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;padding:0 1rem;color:#1b1f24}
h1{font-size:1.3rem}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #d8dee4;vertical-align:top}
th{font-weight:600;background:#f6f8fa}.OK{color:#fff;background:#1a7f37}.WARNING{color:#1b1f24;background:#e3b341}.CRITICAL{color:#fff;background:#cf222e}
.st{padding:.1rem .45rem;border-radius:.6rem;font-weight:600;font-size:.8rem}.bar{width:140px;height:.7rem;background:#eaeef2;border-radius:.3rem;overflow:hidden;display:inline-block;vertical-align:middle}
.bar>span{display:block;height:100%;background:#0969da}.muted{color:#57606a}.why{max-width:340px}code{font-size:.85em}
</style></head><body><%~ it.body %></body></html>`;

const LOGIN = `<h1>hvprotect protection page</h1>
<% if (it.error) { %><p class="CRITICAL st"><%= it.error %></p><% } %>
<form method="post" action="${PAGE_PREFIX}/login"><p><label>Admin token (the server's <code>admin.token</code>)<br>
<input type="password" name="token" size="50" autocomplete="off" autofocus></label></p><p><button type="submit">Sign in</button></p></form>`;

const OVERVIEW = `<h1>Protection on <%= it.serverId %></h1>
<p class="muted"><%= it.vms.length %> protected VM(s); <%= it.counts.OK %> OK, <%= it.counts.WARNING %> warning, <%= it.counts.CRITICAL %> critical. As of <%= it.now %>.</p>
<table><thead><tr><th>VM</th><th>Group</th><th>Status</th><th>Last point</th><th>Next run</th><th>Shadow storage</th><th>Job</th></tr></thead><tbody>
<% it.vms.forEach(function (v) { %><tr data-ds="<%= v.dataSource %>">
<td><a href="${PAGE_PREFIX}/vm/<%= encodeURIComponent(v.dataSource) %>"><%= v.vm %></a></td>
<td><%= v.group || '-' %></td>
<td><span class="st <%= v.level %>"><%= v.level %></span><div class="why muted"><%= v.reason %></div></td>
<td><%= v.lastPointAt || '-' %></td>
<td><%= v.paused ? 'paused' : (v.nextRun || '-') %></td>
<td><span class="bar" title="<%= it.bytes(v.shadowStorage.usedBytes) %>"><span style="width:<%= it.percent(v.shadowStorage) %>%"></span></span>
 <%= it.bytes(v.shadowStorage.usedBytes) %> / <%= v.shadowStorage.maximumBytes === null ? 'unbounded' : it.bytes(v.shadowStorage.maximumBytes) %></td>
<td><% if (v.job) { %><% if (v.job.link) { %><a href="<%= v.job.link %>"><%= v.job.running ? 'running' : 'last job' %></a><% } else { %><%= v.job.workflowId %><% } %><% } else { %>-<% } %></td>
</tr><% }) %></tbody></table>`;

const VM = `<p><a href="${PAGE_PREFIX}">&larr; all VMs</a></p>
<h1><%= it.vm.vm %> <span class="st <%= it.vm.level %>"><%= it.vm.level %></span></h1>
<p class="muted"><%= it.vm.reason %>. Group <%= it.vm.group || '-' %>; data source <code><%= it.vm.dataSource %></code>; <%= it.points.length %> recovery point(s).</p>
<svg width="<%= Math.max(200, it.points.length * 26) %>" height="130" role="img" aria-label="stored bytes per recovery point">
<% it.points.forEach(function (p, i) { var h = it.max ? Math.max(1, Math.round(p.storedBytes / it.max * 100)) : 1; %>
<rect x="<%= i * 26 + 4 %>" y="<%= 110 - h %>" width="20" height="<%= h %>" fill="<%= p.mode === 'offline' ? '#bf8700' : '#0969da' %>"><title><%= p.pointId %>: <%= it.bytes(p.storedBytes) %></title></rect>
<% }) %><line x1="0" y1="110" x2="100%" y2="110" stroke="#8c959f"/><text x="4" y="126" font-size="11" fill="#57606a">stored bytes per point, oldest first (offline points in amber)</text></svg>
<table><thead><tr><th>Recovery point</th><th>Made</th><th>Kind</th><th>Mode</th><th>Stored</th><th>Downtime</th></tr></thead><tbody>
<% it.points.slice().reverse().forEach(function (p) { %><tr data-point="<%= p.pointId %>"><td><code><%= p.pointId %></code></td><td><%= p.createdAt %></td><td><%= p.kind %></td><td><%= p.mode %></td>
<td><%= it.bytes(p.storedBytes) %></td><td><%= p.downtimeMs === undefined ? '-' : (p.downtimeMs / 1000).toFixed(1) + ' s' %></td></tr><% }) %></tbody></table>`;

export function registerProtectionPage(app: FastifyInstance, tokens: TokenStore, source: PageSource): void {
  const eta = new Eta({ autoEscape: true, cache: true });
  eta.loadTemplate('@layout', LAYOUT);
  const sessions = new Map<string, number>();
  const render = (reply: FastifyReply, status: number, title: string, template: string, data: object) =>
    reply.code(status).header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-store').header('x-frame-options', 'DENY')
      .header('content-security-policy', "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'")
      .send(eta.renderString(LAYOUT, { title, body: eta.renderString(template, data) }));

  const allowed = (req: FastifyRequest): boolean => {
    const auth = req.headers.authorization;
    if (auth?.startsWith('Bearer ') && tokens.authenticate(auth.slice(7).trim())?.role === 'admin') return true;
    const sid = /(?:^|;\s*)hvp_page=([A-Za-z0-9_-]+)/.exec(req.headers.cookie ?? '')?.[1];
    const until = sid ? sessions.get(sid) : undefined;
    return until !== undefined && until > Date.now();
  };
  const guard = async (req: FastifyRequest, reply: FastifyReply) => {
    if (!allowed(req)) return reply.code(303).header('location', `${PAGE_PREFIX}/login`).send();
  };

  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 4096 }, (_req, body, done) => done(null, parseQuery(String(body))));

  app.get(`${PAGE_PREFIX}/login`, { config: { access: 'page' } }, async (_req, reply) => render(reply, 200, 'Sign in', LOGIN, {}));
  app.post(`${PAGE_PREFIX}/login`, { config: { access: 'page' } }, async (req, reply) => {
    const token = String(((req.body ?? {}) as Record<string, unknown>).token ?? '').trim();
    if (tokens.authenticate(token)?.role !== 'admin') return render(reply, 401, 'Sign in', LOGIN, { error: 'not an admin token of this server' });
    const sid = randomBytes(32).toString('base64url');
    for (const [k, until] of sessions) if (until < Date.now()) sessions.delete(k);
    sessions.set(sid, Date.now() + SESSION_MS);
    const secure = req.protocol === 'https' ? '; Secure' : '';
    return reply.code(303).header('set-cookie', `${COOKIE}=${sid}; HttpOnly; SameSite=Strict; Path=${PAGE_PREFIX}; Max-Age=${SESSION_MS / 1000}${secure}`).header('location', PAGE_PREFIX).send();
  });
  app.get(PAGE_PREFIX, { config: { access: 'page' }, preHandler: guard }, async (_req, reply) => {
    const vms = await source.vms();
    const counts = { OK: 0, WARNING: 0, CRITICAL: 0 };
    for (const v of vms) counts[v.level]++;
    const percent = (s: PageVm['shadowStorage']) => (s.maximumBytes ? Math.min(100, Math.round((s.usedBytes / s.maximumBytes) * 100)) : 0);
    return render(reply, 200, 'Protection', OVERVIEW, { serverId: source.serverId, vms, counts, now: new Date().toISOString(), bytes, percent });
  });
  app.get(`${PAGE_PREFIX}/vm/:ds`, { config: { access: 'page' }, preHandler: guard }, async (req, reply) => {
    const ds = (req.params as { ds: string }).ds;
    const found = await source.points(ds);
    if (!found) return render(reply, 404, 'Not found', '<p>No protected VM <code><%= it.ds %></code> on this server. <a href="/protection">All VMs</a></p>', { ds });
    const max = Math.max(0, ...found.points.map((p) => p.storedBytes));
    return render(reply, 200, found.vm.vm, VM, { ...found, max, bytes });
  });
}
