// The payload codec's keys (#18): rotation keeps old payloads readable, a payload sealed with a
// key the file lacks fails naming the key id, a tampered payload fails, and the codec server
// round-trips through HTTP with CORS for the Web UI's origin only and its token when set.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { AesGcmPayloadCodec, NoPayloadKeyCodec, PayloadDecryptFailed, PayloadKeyFileError, PayloadKeyMissing, PayloadKeyNotConfigured, PayloadKeyring } from '../../temporal/payload-codec';
import { startCodecServer } from '../../temporal/codec-server';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-codec-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const VM = { name: 'payroll-db-07', config: 'C:\\ClusterStorage\\Volume1\\payroll-db-07\\Virtual Machines\\4F1E.vmcx' };
const plain = (v: unknown) => defaultPayloadConverter.toPayload(v)!;
const value = (p: Payload) => defaultPayloadConverter.fromPayload(p);
const text = (p: Payload) => Buffer.concat([Buffer.from(JSON.stringify(Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString()])))), Buffer.from(p.data ?? [])]).toString('latin1');

test('a sealed payload holds neither the VM name nor the path, names its key, and opens to the same value', async () => {
  const file = path.join(dir, 'payload.keys');
  const ring = PayloadKeyring.create(file);
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  const codec = AesGcmPayloadCodec.fromFile(file);
  const [sealed] = await codec.encode([plain(VM)]);
  expect(text(sealed)).not.toContain('payroll-db-07');
  expect(text(sealed)).not.toContain('ClusterStorage');
  expect(Buffer.from(sealed.metadata!['encryption-key-id']).toString()).toBe(ring.newest.id);
  expect(value((await codec.decode([sealed]))[0])).toEqual(VM);
  // Two seals of one value differ (fresh nonce).
  const [again] = await codec.encode([plain(VM)]);
  expect(Buffer.from(again.data!).equals(Buffer.from(sealed.data!))).toBe(false);
  // A payload some client sent without the codec passes through.
  expect(value((await codec.decode([plain('not sealed')]))[0])).toBe('not sealed');
});

test('after rotation the new key seals and payloads sealed with the old key still open', async () => {
  const file = path.join(dir, 'payload.keys');
  const first = PayloadKeyring.create(file);
  const [old] = await AesGcmPayloadCodec.fromFile(file).encode([plain(VM)]);
  const rotated = PayloadKeyring.rotate(file);
  expect(rotated.ids).toEqual([first.newest.id, rotated.newest.id]);
  expect(rotated.newest.id).not.toBe(first.newest.id);
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  const codec = AesGcmPayloadCodec.fromFile(file);
  const [fresh] = await codec.encode([plain(VM)]);
  expect(Buffer.from(fresh.metadata!['encryption-key-id']).toString()).toBe(rotated.newest.id);
  expect((await codec.decode([old, fresh])).map(value)).toEqual([VM, VM]);
});

test('a payload sealed with a key the file lacks fails naming the key id; tampering fails; an open or missing key file is refused', async () => {
  const a = path.join(dir, 'a.keys');
  const b = path.join(dir, 'b.keys');
  const ringA = PayloadKeyring.create(a);
  PayloadKeyring.create(b);
  const [sealed] = await AesGcmPayloadCodec.fromFile(a).encode([plain(VM)]);
  const other = AesGcmPayloadCodec.fromFile(b);
  await expect(other.decode([sealed])).rejects.toThrow(PayloadKeyMissing);
  await expect(other.decode([sealed])).rejects.toThrow(new RegExp(`payload key "${ringA.newest.id}".*${b.replace(/[.]/g, '\\.')}`));

  // A process with no key file at all says so, naming the key and how to give it.
  await expect(new NoPayloadKeyCodec().decode([sealed])).rejects.toThrow(PayloadKeyNotConfigured);
  await expect(new NoPayloadKeyCodec().decode([sealed])).rejects.toThrow(new RegExp(`payload key "${ringA.newest.id}".*--payload-key-file`));
  expect(value((await new NoPayloadKeyCodec().decode([plain('x')]))[0])).toBe('x');

  const codec = AesGcmPayloadCodec.fromFile(a);
  for (const at of [0, 12, Buffer.from(sealed.data!).length - 1]) {
    const data = Buffer.from(sealed.data!);
    data[at] ^= 1;
    await expect(codec.decode([{ ...sealed, data }])).rejects.toThrow(PayloadDecryptFailed);
  }
  // The key id is authenticated: relabelling a payload with another id of the same file fails.
  PayloadKeyring.rotate(a);
  const both = AesGcmPayloadCodec.fromFile(a);
  const relabelled = { ...sealed, metadata: { ...sealed.metadata, 'encryption-key-id': Buffer.from(both.keyring.newest.id) } };
  await expect(both.decode([relabelled])).rejects.toThrow(/failed authentication/);
  await expect(both.decode([{ ...sealed, data: Buffer.from(sealed.data!).subarray(0, 20) }])).rejects.toThrow(/truncated/);

  fs.chmodSync(a, 0o644);
  expect(() => PayloadKeyring.load(a)).toThrow(/readable by others.*chmod 600/);
  expect(() => PayloadKeyring.load(path.join(dir, 'none.keys'))).toThrow(PayloadKeyFileError);
  expect(() => PayloadKeyring.create(b)).toThrow(/already exists.*rotate/);
});

test('the codec server decodes what it encoded, allows only the Web UI origin, and checks its token', async () => {
  const file = path.join(dir, 'payload.keys');
  PayloadKeyring.create(file);
  const codec = AesGcmPayloadCodec.fromFile(file);
  const origin = 'http://127.0.0.1:8233';
  const server = await startCodecServer({ codec, port: 0, allowedOrigins: [origin], authorization: 'Bearer s3cret' });
  try {
    const asJson = (p: Payload) => ({
      metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
      data: Buffer.from(p.data ?? []).toString('base64'),
    });
    const fromJson = (p: { metadata: Record<string, string>; data: string }): Payload => ({
      metadata: Object.fromEntries(Object.entries(p.metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
      data: Buffer.from(p.data, 'base64'),
    });
    const post = (op: string, body: unknown, headers: Record<string, string> = { Authorization: 'Bearer s3cret', Origin: origin }) =>
      fetch(`${server.url}/${op}`, { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Namespace': 'default', ...headers }, body: JSON.stringify(body) });

    const enc = await post('encode', { payloads: [asJson(plain(VM))] });
    expect(enc.status).toBe(200);
    expect(enc.headers.get('access-control-allow-origin')).toBe(origin);
    const encoded = (await enc.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
    expect(JSON.stringify(encoded)).not.toContain(Buffer.from('payroll').toString('base64').slice(0, 8));
    // What the server sealed opens with the codec, and what the codec sealed opens through the server.
    expect(value((await codec.decode([fromJson(encoded.payloads[0])]))[0])).toEqual(VM);
    const [sealed] = await codec.encode([plain(VM)]);
    const dec = await post('decode', { payloads: [asJson(sealed)] });
    expect(dec.status).toBe(200);
    expect(value(fromJson(((await dec.json()) as { payloads: never[] }).payloads[0]))).toEqual(VM);

    // The temporal CLI's templated endpoint (/<namespace>/decode) is served too; other methods and paths are not.
    const templated = await fetch(`${server.url}/default/decode`, { method: 'POST', headers: { Authorization: 'Bearer s3cret' }, body: JSON.stringify({ payloads: [asJson(sealed)] }) });
    expect(templated.status).toBe(200);
    expect((await fetch(`${server.url}/decode`, { headers: { Authorization: 'Bearer s3cret' } })).status).toBe(405);
    expect((await fetch(`${server.url}/a/b/decode`, { method: 'POST', headers: { Authorization: 'Bearer s3cret' }, body: '{}' })).status).toBe(404);
    // CORS preflight: the UI's origin yes, another no.
    const ok = await fetch(`${server.url}/decode`, { method: 'OPTIONS', headers: { Origin: origin, 'Access-Control-Request-Method': 'POST' } });
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-headers')).toMatch(/X-Namespace/);
    const evil = await fetch(`${server.url}/decode`, { method: 'OPTIONS', headers: { Origin: 'http://evil.example', 'Access-Control-Request-Method': 'POST' } });
    expect(evil.status).toBe(403);
    expect(evil.headers.get('access-control-allow-origin')).toBeNull();
    expect((await post('decode', { payloads: [asJson(sealed)] }, { Authorization: 'Bearer s3cret', Origin: 'http://evil.example' })).status).toBe(403);
    // The token.
    expect((await post('decode', { payloads: [asJson(sealed)] }, { Origin: origin })).status).toBe(401);
    expect((await post('decode', { payloads: [asJson(sealed)] }, { Authorization: 'Bearer wrong!', Origin: origin })).status).toBe(401);
    // Garbage and a payload of an unknown key: 400 with the reason.
    expect((await post('decode', { nope: 1 })).status).toBe(400);
    PayloadKeyring.create(path.join(dir, 'other.keys'));
    const [foreign] = await AesGcmPayloadCodec.fromFile(path.join(dir, 'other.keys')).encode([plain(VM)]);
    const bad = await post('decode', { payloads: [asJson(foreign)] });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/payload key "pk-/);
  } finally {
    await server.close();
  }
});

test('`hvprotect codec key create|rotate|list` make a 0600 key file, refuse to overwrite it, rotate by key id, and list the ids', () => {
  const cli = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, HVPROTECT_PAYLOAD_KEY_FILE: '' } });
  const file = path.join(dir, 'keys', 'payload.keys');
  const created = run('codec', 'key', 'create', file);
  expect(created.status).toBe(0);
  const first = /key (pk-\S+)/.exec(created.stdout)![1];
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);
  const again = run('codec', 'key', 'create', file);
  expect(again.status).toBe(1);
  expect(again.stderr).toMatch(/already exists: rotate it with `hvprotect codec key rotate/);
  expect(PayloadKeyring.load(file).ids).toEqual([first]);
  const rotated = run('codec', 'key', 'rotate', file);
  expect(rotated.status).toBe(0);
  const second = /key (pk-\S+) now encrypts/.exec(rotated.stdout)![1];
  const listed = run('codec', 'key', 'list', file);
  expect(listed.stdout.trim().split('\n').map((l) => l.split(/\s+/)[0])).toEqual([first, second]);
  expect(listed.stdout).toMatch(new RegExp(`${second}.*\\(encrypts\\)`));
  // The codec server needs the key file.
  const noKey = run('codec-server', '--port', '1');
  expect(noKey.status).toBe(2);
  expect(noKey.stderr).toMatch(/needs the payload key file: --payload-key-file FILE or HVPROTECT_PAYLOAD_KEY_FILE/);
});
