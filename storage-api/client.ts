// Typed client of the storage API, for host agents, the CLI and server activities.
import { createHash } from 'node:crypto';
import * as http from 'node:http';
import type { IncomingMessage } from 'node:http';
import * as https from 'node:https';
import type { Readable } from 'node:stream';
import type {
  BackupSession, CommitPointInput, GcReport, PointDeletion, RecoveryPointManifest, RestoreLease, ShadowStorageUsage, VerifyReport,
} from '../repository';
import { GRANT_HEADER } from './grants';
import { API_PREFIX, CHUNK_READ_DIGEST_BYTES, MAX_CHUNK_READ_BYTES, MAX_MISSING_QUERY, encodeChunkBatchParts, encodeSlotPatch } from './protocol';
import type { ApiErrorBody } from './protocol';
import { explainTlsError } from './tls';
import type { StorageClientTls } from './tls';

export class StorageApiError extends Error {
  override readonly name = 'StorageApiError';
  constructor(
    readonly status: number,
    /** The API's error code: UNAUTHENTICATED, INVALID_ARGUMENT, NOT_FOUND, CONFLICT, ... */
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(`${message}${hint ? ` (${hint})` : ''}`);
  }
}

export interface FixedIndexData {
  chunkSize: number;
  virtualSize: number;
  count: number;
  checksum: string;
  /** 32 bytes per slot. */
  slots: Buffer;
}

export interface PointRef {
  dataSource: string;
  pointId: string;
}

export interface IndexPatch {
  virtualSize: number;
  /** Base point to clone on the first patch of this disk; default the session's; null = none. */
  basePoint?: string | null;
  slots: number[];
  /** 32 bytes per slot, parallel to slots; zero bytes for all-zero chunks. */
  digests: Buffer;
}

export class StorageClient {
  private readonly base: string;
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  private readonly httpsAgent: https.Agent;
  /** The per-job grant sent with every request (an agent's; see grants.ts). */
  private grant?: string;

  constructor(
    url: string,
    private readonly token: string,
    /** CA bundle and client certificate for an https:// storage API (tls.ts). */
    tls?: StorageClientTls,
  ) {
    this.base = url.replace(/\/+$/, '') + API_PREFIX;
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 16, ...(tls ?? {}) });
  }

  /** This client for one job: the same token and connections, sending `grant` with each request. */
  withGrant(grant: string): StorageClient {
    const c = Object.create(StorageClient.prototype) as StorageClient;
    Object.assign(c, this);
    c.grant = grant;
    return c;
  }

  /**
   * One request over a keep-alive connection (node:http, which sends Buffers without the copies
   * fetch's web streams make: it measured about twice as fast for chunk uploads). Resolves with
   * the response once the status is 2xx; otherwise reads the JSON error and throws it.
   */
  private call(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<IncomingMessage> {
    const url = new URL(this.base + path);
    // A binary body may come in pieces (a chunk batch): written one by one, never concatenated.
    let payload: Buffer[] | undefined;
    const h: Record<string, string> = { authorization: `Bearer ${this.token}`, ...headers };
    if (this.grant) h[GRANT_HEADER] = this.grant;
    if (Buffer.isBuffer(body)) {
      payload = [body];
      h['content-type'] = 'application/octet-stream';
    } else if (Array.isArray(body) && body.every((b) => Buffer.isBuffer(b))) {
      payload = body as Buffer[];
      h['content-type'] = 'application/octet-stream';
    } else if (body !== undefined) {
      payload = [Buffer.from(JSON.stringify(body))];
      h['content-type'] = 'application/json';
    }
    if (payload) h['content-length'] = String(payload.reduce((a, b) => a + b.length, 0));
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method, headers: h, agent: url.protocol === 'https:' ? this.httpsAgent : this.httpAgent }, (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) return resolve(res);
        // An error body is a few hundred bytes: read at most 64 KiB of whatever comes, then hang up.
        const parts: Buffer[] = [];
        let kept = 0;
        let finished = false;
        res.on('data', (c: Buffer) => {
          parts.push(c);
          kept += c.length;
          if (kept > 64 * 1024) {
            res.destroy();
            finish();
          }
        });
        res.on('error', () => finish());
        res.on('end', () => finish());
        res.on('close', () => finish());
        const finish = () => {
          if (finished) return;
          finished = true;
          let err: ApiErrorBody = { error: `HTTP_${status}`, message: res.statusMessage ?? '' };
          try {
            const parsed = JSON.parse(Buffer.concat(parts).toString('utf8')) as Partial<ApiErrorBody> | null;
            // A proxy or another server may answer anything: use only well-formed fields.
            if (parsed && typeof parsed === 'object') {
              err = {
                error: typeof parsed.error === 'string' ? parsed.error : err.error,
                message: typeof parsed.message === 'string' ? parsed.message : err.message,
                hint: typeof parsed.hint === 'string' ? parsed.hint : undefined,
                details: parsed.details && typeof parsed.details === 'object' ? parsed.details : undefined,
              };
            }
          } catch {
            // not JSON: keep the status text
          }
          reject(new StorageApiError(status, err.error, err.message, err.hint, err.details));
        };
      });
      req.on('error', (err) => reject(explainTlsError(err, url.origin)));
      if (payload) for (const part of payload) req.write(part);
      req.end();
    });
  }

  private async body(res: IncomingMessage): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of res) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  private async json<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.call(method, path, body);
    const data = await this.body(res);
    if (res.statusCode === 204 || data.length === 0) return undefined as T;
    return JSON.parse(data.toString('utf8')) as T;
  }

  /** Closes idle keep-alive connections (call when done, so the process can exit). */
  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }

  // ---- chunks ---------------------------------------------------------------------------

  /** Which of these digests the repository lacks (any number; batched). */
  async missingChunks(digests: string[]): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < digests.length; i += MAX_MISSING_QUERY) {
      const r = await this.json<{ missing: string[] }>('POST', '/chunks/missing', { digests: digests.slice(i, i + MAX_MISSING_QUERY) });
      out.push(...r.missing);
    }
    return out;
  }

  async putChunk(digest: string, data: Buffer): Promise<{ written: boolean; storedSize: number }> {
    return this.json('PUT', `/chunks/${digest}`, data);
  }

  /** Uploads several chunks in one request (at most MAX_CHUNK_BATCH_BODY bytes in all). */
  async putChunks(chunks: Array<{ digest: string; data: Buffer }>): Promise<Array<{ digest: string; written: boolean; storedSize: number }>> {
    return (await this.json<{ results: Array<{ digest: string; written: boolean; storedSize: number }> }>('POST', '/chunks/batch', encodeChunkBatchParts(chunks))).results;
  }

  /**
   * A chunk's plaintext as the server sent it, not yet trusted: recovery's PointDiskReader checks
   * it against its digest (one hash per chunk, there).
   */
  /**
   * Many chunks as stored, in one request (POST /chunks/read; protocol.ts has the records): not
   * decoded, not trusted. recovery/chunk-decoder.ts decodes and checks them. The body is one
   * Buffer owning its memory (it can be handed to a worker thread).
   */
  async readChunks(digests: string[]): Promise<Buffer> {
    const res = await this.call('POST', '/chunks/read', { digests });
    const parts: Buffer[] = [];
    let n = 0;
    for await (const c of res) {
      n += (c as Buffer).length;
      if (n > MAX_CHUNK_READ_BYTES + digests.length * CHUNK_READ_DIGEST_BYTES) {
        res.destroy();
        throw new StorageApiError(502, 'BAD_RESPONSE', `chunk read of ${digests.length} chunks answered more than ${MAX_CHUNK_READ_BYTES} bytes`);
      }
      parts.push(c as Buffer);
    }
    const body = Buffer.allocUnsafeSlow(n); // its own ArrayBuffer, transferable
    let o = 0;
    for (const p of parts) o += p.copy(body, o);
    return body;
  }

  async getChunk(digest: string): Promise<Buffer> {
    return this.body(await this.call('GET', `/chunks/${digest}`));
  }

  // ---- backup sessions ------------------------------------------------------------------

  /** Opens a backup session (the GC lease); chunkSize applies only to a new data source. */
  async beginSession(dataSource: string, opts: { basePoint?: string; chunkSize?: number } = {}): Promise<BackupSession> {
    return this.json('POST', '/sessions', { dataSource, ...opts });
  }

  async getSession(sessionId: string): Promise<BackupSession> {
    return this.json('GET', `/sessions/${sessionId}`);
  }

  async abortSession(sessionId: string): Promise<void> {
    await this.json('DELETE', `/sessions/${sessionId}`);
  }

  /** Writes index slots (the delta form: only changed slots, against the base point). */
  async putIndex(sessionId: string, diskId: string, patch: IndexPatch): Promise<{ changedChunks: number; addedBytes: number }> {
    const q = new URLSearchParams({ virtualSize: String(patch.virtualSize) });
    if (patch.basePoint !== undefined) q.set('base', patch.basePoint === null ? 'none' : patch.basePoint);
    return this.json('POST', `/sessions/${sessionId}/disks/${encodeURIComponent(diskId)}/slots?${q}`, encodeSlotPatch(patch.slots, patch.digests));
  }

  /** Writes a whole index (32 bytes per slot). */
  async putFullIndex(sessionId: string, diskId: string, virtualSize: number, digests: Buffer): Promise<{ changedChunks: number; addedBytes: number }> {
    return this.json('PUT', `/sessions/${sessionId}/disks/${encodeURIComponent(diskId)}/index?virtualSize=${virtualSize}`, digests);
  }

  async commitPoint(sessionId: string, input: CommitPointInput): Promise<RecoveryPointManifest> {
    return this.json('POST', `/sessions/${sessionId}/commit`, input);
  }

  // ---- recovery points and restore --------------------------------------------------------

  async listPoints(dataSource: string): Promise<RecoveryPointManifest[]> {
    return (await this.json<{ points: RecoveryPointManifest[] }>('GET', `/datasources/${encodeURIComponent(dataSource)}/points`)).points;
  }

  async getPoint(point: PointRef): Promise<RecoveryPointManifest> {
    return this.json('GET', `/datasources/${encodeURIComponent(point.dataSource)}/points/${encodeURIComponent(point.pointId)}`);
  }

  /** A disk's fixed index, with its checksum checked. */
  async getIndex(point: PointRef, diskId: string): Promise<FixedIndexData> {
    const b = await this.body(await this.call('GET', `/datasources/${encodeURIComponent(point.dataSource)}/points/${encodeURIComponent(point.pointId)}/disks/${encodeURIComponent(diskId)}/index`));
    const slots = b.subarray(64);
    const checksum = b.subarray(32, 64).toString('hex');
    if (b.length < 64 || b.subarray(0, 8).toString('latin1') !== 'HVPFIDX1' || slots.length % 32 !== 0 || b.readBigUInt64LE(24) !== BigInt(slots.length / 32) || createHash('sha256').update(slots).digest('hex') !== checksum) {
      throw new StorageApiError(502, 'CORRUPT', `index of ${point.dataSource}/${point.pointId}/${diskId} arrived damaged`, 'retry; run verify on the server');
    }
    return { chunkSize: b.readUInt32LE(12), virtualSize: Number(b.readBigUInt64LE(16)), count: Number(b.readBigUInt64LE(24)), checksum, slots };
  }

  /** Streams a disk of a point as raw bytes (or a range); the server checks every chunk. */
  async openDiskStream(point: PointRef, diskId: string, range?: { offset: number; length?: number }): Promise<Readable> {
    const q = range ? `?offset=${range.offset}${range.length !== undefined ? `&length=${range.length}` : ''}` : '';
    return this.call('GET', `/datasources/${encodeURIComponent(point.dataSource)}/points/${encodeURIComponent(point.pointId)}/disks/${encodeURIComponent(diskId)}/raw${q}`);
  }

  /** Keeps the point from deletion for the restore's duration. */
  async beginRestore(point: PointRef, ttlSeconds?: number): Promise<RestoreLease> {
    return this.json('POST', `/datasources/${encodeURIComponent(point.dataSource)}/points/${encodeURIComponent(point.pointId)}/restore-leases`, ttlSeconds ? { ttlSeconds } : {});
  }

  async endRestore(leaseId: string): Promise<void> {
    await this.json('DELETE', `/restore-leases/${leaseId}`);
  }

  // ---- management (admin token) -----------------------------------------------------------

  async issueToken(name: string, role: 'agent' | 'admin' = 'agent', opts: { rotate?: boolean } = {}): Promise<string> {
    return (await this.json<{ token: string }>('POST', '/admin/tokens', { name, role, ...(opts.rotate ? { rotate: true } : {}) })).token;
  }

  /** The name and role of this client's token (any valid token may ask). */
  async whoami(): Promise<{ name: string; role: 'agent' | 'admin' }> {
    return this.json('GET', '/whoami');
  }

  /** A backup grant for an open session and its disks, or a restore grant for a lease (admin). */
  async issueGrant(req: { sessionId: string; disks: Array<{ diskId: string; virtualSize: number }> } | { leaseId: string }): Promise<string> {
    return ((await this.json('POST', '/admin/grants', req)) as { grant: string }).grant;
  }

  async revokeToken(name: string): Promise<void> {
    await this.json('DELETE', `/admin/tokens/${encodeURIComponent(name)}`);
  }

  async listShadowStorage(dataSource?: string): Promise<ShadowStorageUsage[]> {
    const q = dataSource ? `?dataSource=${encodeURIComponent(dataSource)}` : '';
    return (await this.json<{ shadowStorage: ShadowStorageUsage[] }>('GET', `/admin/shadowstorage${q}`)).shadowStorage;
  }

  async addShadowStorage(dataSource: string, maxSize?: string): Promise<ShadowStorageUsage> {
    return this.json('POST', '/admin/shadowstorage', { dataSource, maxSize });
  }

  async resizeShadowStorage(dataSource: string, change: { maxSize?: string; maxPoints?: number; retentionRangeDays?: number | null }): Promise<ShadowStorageUsage & { deleted: PointDeletion[] }> {
    return this.json('PATCH', `/admin/shadowstorage/${encodeURIComponent(dataSource)}`, change);
  }

  async deleteOldestPoint(dataSource: string): Promise<PointDeletion> {
    return this.json('POST', `/admin/datasources/${encodeURIComponent(dataSource)}/delete-oldest`, {});
  }

  async enforceRetention(dataSource: string): Promise<PointDeletion[]> {
    return (await this.json<{ deleted: PointDeletion[] }>('POST', `/admin/datasources/${encodeURIComponent(dataSource)}/enforce-retention`, {})).deleted;
  }

  async deletions(): Promise<PointDeletion[]> {
    return (await this.json<{ deletions: PointDeletion[] }>('GET', '/admin/deletions')).deletions;
  }

  async collectGarbage(): Promise<GcReport> {
    return this.json('POST', '/admin/gc', {});
  }

  async verify(opts: { readData?: boolean; quarantine?: boolean; dataSource?: string } = {}): Promise<VerifyReport> {
    return this.json('POST', '/admin/verify', opts);
  }
}
