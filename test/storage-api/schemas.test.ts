// Every JSON body and query is checked by its route's schema before the route runs: wrong types
// are refused rather than coerced, unknown fields are refused rather than dropped, and the refusal
// names the field and says what the route expects. Nothing is written by a refused request.
import { startFixture, type Fixture } from './support';

let f: Fixture;
beforeAll(async () => {
  f = await startFixture({ createChunkFolders: false, encoderThreads: 0 });
});
afterAll(() => f.close());

async function call(method: 'POST' | 'PATCH' | 'PUT', url: string, body?: unknown, token = f.agentToken) {
  const binary = Buffer.isBuffer(body);
  const r = await fetch(f.api.url + url, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': binary ? 'application/octet-stream' : 'application/json' }) },
    ...(body === undefined ? {} : { body: binary ? body : JSON.stringify(body) }),
  });
  return { status: r.status, json: (await r.json()) as { error: string; message: string; hint: string } };
}

describe('storage API schemas', () => {
  it('refuses a number sent as a string instead of coercing it', async () => {
    const s = await f.admin.beginSession('vm-schema');
    const r = await call('POST', `/v1/sessions/${s.sessionId}/commit`, { kind: 'initial-replica', mode: 'online', disks: [{ diskId: 'd0', fileName: 'd0.vhdx', virtualSize: '65536' }] }, f.adminToken);
    expect(r.status).toBe(400);
    expect(r.json.error).toBe('INVALID_ARGUMENT');
    expect(r.json.message).toMatch(/virtualSize/);
    expect(r.json.hint).toMatch(/"disks": \[\{ "diskId", "fileName", "virtualSize" \}\]/);
    expect((await f.admin.getSession(s.sessionId)).sessionId).toBe(s.sessionId);
  });

  it('refuses an unknown field rather than dropping it', async () => {
    const r = await call('POST', '/v1/sessions', { dataSource: 'vm-x', basePiont: '20261124T154130.123Z' }, f.adminToken);
    expect(r.status).toBe(400);
    expect(r.json.message).toMatch(/additional properties/);
    expect(await f.repo.listDataSources()).not.toContain('vm-x');
  });

  it('checks the query: virtualSize must be digits', async () => {
    const s = await f.admin.beginSession('vm-q');
    const r = await call('PUT', `/v1/sessions/${s.sessionId}/disks/d0/index?virtualSize=1e6`, Buffer.alloc(32), f.adminToken);
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ error: 'INVALID_ARGUMENT', hint: expect.stringMatching(/virtualSize=BYTES/) });
  });

  it('admin bodies: a shadow storage size is text, maxPoints an integer', async () => {
    await f.admin.beginSession('vm-ss');
    const a = await call('PATCH', '/v1/admin/shadowstorage/vm-ss', { maxSize: 20 }, f.adminToken);
    expect(a.status).toBe(400);
    expect(a.json.hint).toMatch(/"20GB"/);
    const b = await call('PATCH', '/v1/admin/shadowstorage/vm-ss', { maxPoints: 2.5 }, f.adminToken);
    expect(b.status).toBe(400);
    const ok = await call('PATCH', '/v1/admin/shadowstorage/vm-ss', { maxSize: '20GB', maxPoints: 5 }, f.adminToken);
    expect(ok.status).toBe(200);
  });

  it('a route whose body is all optional takes no body at all', async () => {
    const r = await call('POST', '/v1/admin/verify', undefined, f.adminToken);
    expect(r.status).toBe(200);
  });
});
