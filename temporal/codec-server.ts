// The codec server the Temporal Web UI (and `temporal` CLI's --codec-endpoint) calls to show
// sealed payloads, Temporal's documented remote-codec pattern: POST /encode and POST /decode
// with {"payloads":[{metadata:{k:base64},data:base64}]}, answering the same shape; CORS for the
// Web UI's origin only; optionally an Authorization header that must match a token.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import type { Payload, PayloadCodec } from '@temporalio/common';

export interface CodecServerOptions {
  codec: PayloadCodec;
  host?: string;
  /** 0 = any free port. */
  port: number;
  /** Origins allowed by CORS (the Web UI's, e.g. http://localhost:8233); none = no browser may call. */
  allowedOrigins: string[];
  /** When set, requests must carry `Authorization: <authorization>` (e.g. "Bearer …"). */
  authorization?: string;
  /** Largest request body (default 4 MiB). */
  maxBodyBytes?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

export interface CodecServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

interface JsonPayload {
  metadata?: Record<string, string>;
  data?: string;
}

function fromJson(p: JsonPayload): Payload {
  if (p === null || typeof p !== 'object') throw new Error('a payload is not an object');
  const metadata: Record<string, Uint8Array> = {};
  for (const [k, v] of Object.entries(p.metadata ?? {})) {
    if (typeof v !== 'string') throw new Error(`payload metadata "${k}" is not base64`);
    metadata[k] = Buffer.from(v, 'base64');
  }
  return { metadata, data: Buffer.from(typeof p.data === 'string' ? p.data : '', 'base64') };
}

function toJson(p: Payload): JsonPayload {
  const metadata: Record<string, string> = {};
  for (const [k, v] of Object.entries(p.metadata ?? {})) metadata[k] = Buffer.from(v).toString('base64');
  return { metadata, data: Buffer.from(p.data ?? new Uint8Array()).toString('base64') };
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export async function startCodecServer(opts: CodecServerOptions): Promise<CodecServer> {
  const maxBody = opts.maxBodyBytes ?? 4 * 1024 * 1024;
  const origins = new Set(opts.allowedOrigins.map((o) => o.replace(/\/+$/, '')));
  const server = http.createServer((req, res) => {
    const origin = req.headers.origin;
    if (origin && origins.has(origin)) {
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Access-Control-Allow-Credentials', 'true');
      res.setHeader('Access-Control-Allow-Methods', 'POST, OPTIONS');
      res.setHeader('Access-Control-Allow-Headers', 'Content-Type, X-Namespace, Authorization');
      res.setHeader('Vary', 'Origin');
    }
    const answer = (status: number, body?: unknown) => {
      res.writeHead(status, body === undefined ? {} : { 'Content-Type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    if (req.method === 'OPTIONS') return answer(origin && origins.has(origin) ? 204 : 403);
    // `/decode`, or `/<namespace>/decode` as the temporal CLI's --codec-endpoint templating sends.
    const op = /^(?:\/[^/]+)?\/(encode|decode)\/?$/.exec(req.url?.split('?')[0] ?? '')?.[1];
    if (!op) return answer(404, { message: 'POST /encode or /decode' });
    if (req.method !== 'POST') return answer(405, { message: 'POST /encode or /decode' });
    if (origin && !origins.has(origin)) return answer(403, { message: `origin ${origin} is not allowed` });
    if (opts.authorization && !sameSecret(req.headers.authorization ?? '', opts.authorization)) {
      res.setHeader('Connection', 'close');
      return answer(401, { message: 'missing or wrong Authorization header' });
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > maxBody) {
        res.setHeader('Connection', 'close');
        answer(413, { message: `body above ${maxBody} bytes` });
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (res.writableEnded) return;
      void (async () => {
        let payloads: Payload[];
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { payloads?: JsonPayload[] };
          if (!Array.isArray(body?.payloads)) throw new Error('expected {"payloads":[…]}');
          payloads = body.payloads.map(fromJson);
        } catch (err) {
          return answer(400, { message: (err as Error).message });
        }
        try {
          const out = op === 'encode' ? await opts.codec.encode(payloads) : await opts.codec.decode(payloads);
          answer(200, { payloads: out.map(toJson) });
        } catch (err) {
          opts.log?.('codec server could not decode', { op, namespace: req.headers['x-namespace'], error: (err as Error).message });
          answer(400, { message: (err as Error).message });
        }
      })();
    });
  });
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host ?? '127.0.0.1', () => resolve());
  });
  const { address, port } = server.address() as AddressInfo;
  const host = address.includes(':') ? `[${address}]` : address;
  return {
    url: `http://${host}:${port}`,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
