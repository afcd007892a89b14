// #18: /metrics on an address of its own and behind a token, over real HTTP.
import * as net from 'node:net';
import { ProtectionMetrics, startMetricsServer } from '../../metrics/metrics';

const get = (url: string, token?: string) => fetch(url, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });

test('/metrics binds to the address it is given and not to others', async () => {
  const m = await startMetricsServer({ metrics: new ProtectionMetrics(), host: '127.0.0.2', port: 0 });
  try {
    expect(m.url).toMatch(/^http:\/\/127\.0\.0\.2:\d+\/metrics$/);
    const res = await get(m.url);
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('hvprotect_recovery_points_total');
    const port = Number(new URL(m.url).port);
    const refused = await new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve('connected')));
      s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(refused).toBe('ECONNREFUSED');
  } finally {
    await m.close();
  }
});

test('/metrics with a token answers only that bearer token', async () => {
  const m = await startMetricsServer({ metrics: new ProtectionMetrics(), port: 0, token: 'scrape-secret-1' });
  try {
    for (const t of [undefined, 'wrong', 'scrape-secret-', 'scrape-secret-1x', '']) {
      const res = await get(m.url, t);
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
      expect(await res.text()).not.toContain('hvprotect_');
    }
    const ok = await get(m.url, 'scrape-secret-1');
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('hvprotect_recovery_points_total');
  } finally {
    await m.close();
  }
});
