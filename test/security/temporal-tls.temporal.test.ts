// Temporal over mutual TLS with a self-made CA. The dev server does not serve TLS, so a small
// TLS-terminating proxy stands in front of it: it presents a certificate for "temporal.test"
// signed by our CA, requires a client certificate signed by the same CA, and pipes the decrypted
// stream (gRPC over HTTP/2) to the dev server's plain port. The settings come the standard way:
// TEMPORAL_TLS_* variables, or a TOML profile with a [profile.X.tls] table.
import fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import tls from 'node:tls';
import { connectClient, connectWorker, loadTemporalSettings } from '../../temporal/connection';
import { makePki, type Pki } from './pki';

let pki: Pki;
let pkiDir: string;
let proxy: tls.Server;
let proxyPort: number;
/** Client certificates the proxy saw on completed handshakes (subject CN). */
const seenClients: string[] = [];
const refusedHandshakes: string[] = [];

beforeAll(async () => {
  pkiDir = await mkdtemp(path.join(tmpdir(), 'hvp-tpki-'));
  pki = makePki(pkiDir, ['DNS:temporal.test']);
  const [upHost, upPort] = (process.env.TEMPORAL_ADDRESS ?? 'localhost:7233').split(':');
  proxy = tls.createServer(
    {
      cert: fs.readFileSync(pki.serverCert),
      key: fs.readFileSync(pki.serverKey),
      ca: fs.readFileSync(pki.caCert),
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
    },
    (socket) => {
      const cn = socket.getPeerCertificate()?.subject?.CN;
      seenClients.push(String(cn));
      const up = net.connect(Number(upPort), upHost === 'localhost' ? '127.0.0.1' : upHost);
      socket.pipe(up).pipe(socket);
      const end = () => {
        socket.destroy();
        up.destroy();
      };
      socket.on('error', end);
      up.on('error', end);
      socket.on('close', end);
      up.on('close', end);
    },
  );
  proxy.on('tlsClientError', (err) => refusedHandshakes.push(err.message));
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  proxyPort = (proxy.address() as net.AddressInfo).port;
});

afterAll(async () => {
  await new Promise((resolve) => proxy?.close(resolve));
  await rm(pkiDir, { recursive: true, force: true });
});

function env(extra: Record<string, string>): Record<string, string> {
  return {
    TEMPORAL_ADDRESS: `127.0.0.1:${proxyPort}`,
    TEMPORAL_NAMESPACE: process.env.TEMPORAL_NAMESPACE ?? 'default',
    TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml',
    ...extra,
  };
}

test('TEMPORAL_TLS_* variables become connectionOptions.tls with the file contents', () => {
  const s = loadTemporalSettings(env({
    TEMPORAL_TLS_CLIENT_CERT_PATH: pki.clientCert,
    TEMPORAL_TLS_CLIENT_KEY_PATH: pki.clientKey,
    TEMPORAL_TLS_SERVER_CA_CERT_PATH: pki.caCert,
    TEMPORAL_TLS_SERVER_NAME: 'temporal.test',
  }));
  const t = s.connectionOptions.tls as { serverNameOverride?: string; serverRootCACertificate?: Uint8Array; clientCertPair?: { crt: Uint8Array; key: Uint8Array } };
  expect(t.serverNameOverride).toBe('temporal.test');
  expect(Buffer.from(t.serverRootCACertificate!).equals(fs.readFileSync(pki.caCert))).toBe(true);
  expect(Buffer.from(t.clientCertPair!.crt).equals(fs.readFileSync(pki.clientCert))).toBe(true);
  expect(Buffer.from(t.clientCertPair!.key).equals(fs.readFileSync(pki.clientKey))).toBe(true);
});

test('a TOML profile with a tls table is read the same way', () => {
  const toml = path.join(pkiDir, 'temporal.toml');
  fs.writeFileSync(toml, [
    '[profile.secure]',
    `address = "127.0.0.1:${proxyPort}"`,
    'namespace = "backups"',
    '[profile.secure.tls]',
    `client_cert_path = "${pki.clientCert}"`,
    `client_key_path = "${pki.clientKey}"`,
    `server_ca_cert_path = "${pki.caCert}"`,
    'server_name = "temporal.test"',
    '',
  ].join('\n'));
  const s = loadTemporalSettings({ TEMPORAL_CONFIG_FILE: toml, TEMPORAL_PROFILE: 'secure' });
  expect(s).toMatchObject({ address: `127.0.0.1:${proxyPort}`, namespace: 'backups', source: 'config profile' });
  const t = s.connectionOptions.tls as { serverNameOverride?: string; serverRootCACertificate?: Uint8Array; clientCertPair?: { crt: Uint8Array } };
  expect(t.serverNameOverride).toBe('temporal.test');
  expect(Buffer.from(t.serverRootCACertificate!).equals(fs.readFileSync(pki.caCert))).toBe(true);
  expect(Buffer.from(t.clientCertPair!.crt).equals(fs.readFileSync(pki.clientCert))).toBe(true);
});

test('connectClient and connectWorker complete a mutual-TLS handshake and talk to Temporal through it', async () => {
  const settings = loadTemporalSettings(env({
    TEMPORAL_TLS_CLIENT_CERT_PATH: pki.clientCert,
    TEMPORAL_TLS_CLIENT_KEY_PATH: pki.clientKey,
    TEMPORAL_TLS_SERVER_CA_CERT_PATH: pki.caCert,
    TEMPORAL_TLS_SERVER_NAME: 'temporal.test',
  }));
  const before = seenClients.length;
  const client = await connectClient(settings, { connectTimeoutMs: 10_000 });
  try {
    const info = await client.connection.workflowService.getSystemInfo({});
    expect(info.serverVersion).toBeTruthy();
    const ns = await client.connection.workflowService.describeNamespace({ namespace: settings.namespace });
    expect(ns.namespaceInfo?.name).toBe(settings.namespace);
  } finally {
    await client.connection.close();
  }
  const worker = await connectWorker(settings);
  await worker.close();
  expect(seenClients.slice(before)).toContain('client');
});

test('without a client certificate, or trusting another CA, the connection is refused with the address named', async () => {
  const noCert = loadTemporalSettings(env({ TEMPORAL_TLS_SERVER_CA_CERT_PATH: pki.caCert, TEMPORAL_TLS_SERVER_NAME: 'temporal.test' }));
  await expect(connectClient(noCert, { connectTimeoutMs: 3_000 })).rejects.toThrow(new RegExp(`cannot reach the Temporal server at 127\\.0\\.0\\.1:${proxyPort}`));
  const otherCa = loadTemporalSettings(env({
    TEMPORAL_TLS_CLIENT_CERT_PATH: pki.clientCert,
    TEMPORAL_TLS_CLIENT_KEY_PATH: pki.clientKey,
    TEMPORAL_TLS_SERVER_CA_CERT_PATH: pki.otherCaCert,
    TEMPORAL_TLS_SERVER_NAME: 'temporal.test',
  }));
  await expect(connectClient(otherCa, { connectTimeoutMs: 3_000 })).rejects.toThrow(/cannot reach the Temporal server/);
  expect(refusedHandshakes.length).toBeGreaterThan(0);
});
