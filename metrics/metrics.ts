// Prometheus metrics of the protection server: our own (recovery points, bytes read and sent,
// backup duration, offline downtime) on one /metrics endpoint, followed by the Temporal SDK
// runtime's own metrics when its Prometheus exporter runs (Runtime telemetry), so one scrape
// target has both.
import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { protectionStatus, type StatusLevel } from '../protection/status';
import type { ProtectionState } from '../workflows/protection';

const LEVEL_VALUE: Record<StatusLevel, number> = { OK: 0, WARNING: 1, CRITICAL: 2 };

export class ProtectionMetrics {
  readonly registry = new Registry();
  readonly recoveryPoints = new Counter({
    name: 'hvprotect_recovery_points_total',
    help: 'Recovery points committed',
    labelNames: ['datasource', 'kind', 'mode'] as const,
    registers: [this.registry],
  });
  readonly retentionFailures = new Counter({
    name: 'hvprotect_retention_failures_total',
    help: 'Retention runs that failed after a commit (the point is kept; the next backup applies retention again)',
    labelNames: ['datasource'] as const,
    registers: [this.registry],
  });
  readonly alerts = new Counter({
    name: 'hvprotect_protection_alerts_total',
    help: 'Changes of protection status alerted (one per change), by the status changed to',
    labelNames: ['datasource', 'to'] as const,
    registers: [this.registry],
  });
  readonly bytesRead = new Counter({
    name: 'hvprotect_bytes_read_total',
    help: 'Bytes read from checkpoint disks by committed backups',
    labelNames: ['datasource', 'host'] as const,
    registers: [this.registry],
  });
  readonly bytesSent = new Counter({
    name: 'hvprotect_bytes_sent_total',
    help: 'Bytes sent to the repository (chunks it did not have) by committed backups',
    labelNames: ['datasource', 'host'] as const,
    registers: [this.registry],
  });
  readonly backupDuration = new Histogram({
    name: 'hvprotect_backup_duration_seconds',
    help: 'From backup workflow start to commit',
    labelNames: ['kind', 'mode'] as const,
    buckets: [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600],
    registers: [this.registry],
  });
  readonly offlineDowntime = new Histogram({
    name: 'hvprotect_offline_downtime_seconds',
    help: 'How long an offline backup kept a VM saved or paused',
    labelNames: ['datasource'] as const,
    buckets: [0.01, 0.1, 0.5, 1, 5, 15, 60, 300],
    registers: [this.registry],
  });
  /**
   * The protections this server owns, as their workflows last reported their state
   * (metrics/protection-states.ts refreshes it); the status is computed at each scrape.
   */
  protectionStates = new Map<string, { state: ProtectionState; /** when it last answered (ms since the epoch): a protection that stops answering keeps its last seen state */ answeredAt: number }>();
  readonly lastRecoveryPoint = new Gauge({
    name: 'hvprotect_last_recovery_point_timestamp_seconds',
    help: 'When the newest good recovery point of the data source was made (unix seconds); absent before the first',
    labelNames: ['datasource', 'group', 'server'] as const,
    registers: [this.registry],
    collect: () => this.collectStatus(),
  });
  readonly status = new Gauge({
    name: 'hvprotect_protection_status',
    help: 'Protection status against the RPO: 0 OK, 1 WARNING (last backup failed, or past the RPO), 2 CRITICAL (past twice the RPO)',
    labelNames: ['datasource', 'group', 'server'] as const,
    registers: [this.registry],
  });
  readonly rpo = new Gauge({
    name: 'hvprotect_rpo_seconds',
    help: 'The recovery point objective of the data source',
    labelNames: ['datasource', 'group', 'server'] as const,
    registers: [this.registry],
  });
  readonly checkNeeded = new Gauge({
    name: 'hvprotect_consistency_check_needed',
    help: '1 when the last backup failed in a way that needs a consistency check',
    labelNames: ['datasource', 'group', 'server'] as const,
    registers: [this.registry],
  });

  readonly stateAge = new Gauge({
    name: 'hvprotect_protection_state_age_seconds',
    help: 'Seconds since the protection last answered this server\'s state query: the status, RPO and last recovery point gauges are as of then',
    labelNames: ['datasource', 'group', 'server'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'hvprotect_process_' });
  }

  private collectStatus(): void {
    for (const g of [this.lastRecoveryPoint, this.status, this.rpo, this.checkNeeded, this.stateAge]) g.reset();
    const now = new Date();
    for (const { state, answeredAt } of this.protectionStates.values()) {
      const st = protectionStatus(state, now);
      // A VM protected on its own (`protect add`) is in no group: "".
      const labels = { datasource: state.dataSource, group: state.group ?? '', server: state.server };
      if (st.lastGood) this.lastRecoveryPoint.set(labels, Date.parse(st.lastGood.at) / 1000);
      this.status.set(labels, LEVEL_VALUE[st.level]);
      this.rpo.set(labels, st.rpoSeconds);
      this.checkNeeded.set(labels, st.checkNeeded ? 1 : 0);
      this.stateAge.set(labels, Math.max(0, (now.getTime() - answeredAt) / 1000));
    }
  }
}

export interface MetricsServer {
  url: string;
  close(): Promise<void>;
}

/** Whether `header` is `Bearer <token>`, compared in constant time. */
function bearerMatches(header: string | undefined, token: string): boolean {
  const want = createHash('sha256').update(`Bearer ${token}`).digest();
  const got = createHash('sha256').update(header ?? '').digest();
  return timingSafeEqual(want, got);
}

/**
 * Serves /metrics on `host` (default loopback); `sdkMetricsUrl` is fetched and appended (the SDK
 * runtime's exporter). With `token`, a scrape must send `Authorization: Bearer <token>`.
 */
export async function startMetricsServer(opts: { metrics: ProtectionMetrics; host?: string; port: number; sdkMetricsUrl?: string; token?: string }): Promise<MetricsServer> {
  const server = http.createServer(async (req, res) => {
    if (opts.token !== undefined && !bearerMatches(req.headers.authorization, opts.token)) {
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer realm="hvprotect metrics"', connection: 'close' })
        .end('a bearer token is required (the server\'s --metrics-token-file; Prometheus: authorization.credentials_file)\n');
      return;
    }
    if (req.url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only /metrics here\n');
      return;
    }
    try {
      let body = await opts.metrics.registry.metrics();
      if (opts.sdkMetricsUrl) {
        const sdk = await fetch(opts.sdkMetricsUrl).then((r) => (r.ok ? r.text() : ''), () => '');
        if (sdk) body += `\n# Temporal SDK runtime\n${sdk}`;
      }
      res.writeHead(200, { 'content-type': opts.metrics.registry.contentType }).end(body);
    } catch (err) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`);
    }
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, host, () => resolve());
  });
  const addr = server.address() as { port: number };
  return { url: `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}/metrics`, close: () => new Promise((r) => server.close(() => r())) };
}
