// Per-job grants: what an agent may touch in the storage API, beyond holding a valid agent token.
//
// The protection server's own workflow steps mint a grant in process — planBackup for a backup's
// session, beginRestoreLease for the point a restore reads — and the workflow hands it to the host
// activity, which sends it with every storage request (header `x-hvprotect-grant`). A grant names
// one data source and one job:
//   backup   the session it may upload chunks to and patch the slots of, the disks it may write
//            with their largest virtual size (what the host reported), and the base point whose
//            index it may read (a consistency check compares against it)
//   restore  the one point (and its lease) it may read: manifest, indexes, raw bytes, and only
//            the chunks that point's indexes name
// A stolen agent token alone reads nothing and writes nothing; a stolen grant (it travels through
// Temporal's history: encrypt payloads with the payload codec) is useless without an agent token,
// dies with its session or lease, and never reaches another data source.
//
// A grant is "hvg_" + base64url(JSON claims) + "." + base64url(HMAC-SHA256(key, that base64url)).
// The key is the server's own (32 random bytes in <state>/grant.key, 0600): only this server's
// workflows mint grants for this server's repository, so no key is shared with anyone.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { isNotFound } from '../repository/errors';

export const GRANT_HEADER = 'x-hvprotect-grant';

interface CommonClaims {
  v: 1;
  /** The workflow the job belongs to (for logs and refusals). */
  job: string;
  ds: string;
  /** Expiry, ms since the epoch. */
  exp: number;
}

export interface BackupGrantClaims extends CommonClaims {
  kind: 'backup';
  sid: string;
  /** The base point the agent may read the index of (consistency check), or null. */
  base: string | null;
  /** diskId → the largest virtual size the agent may give that disk (what its host reported). */
  disks: Record<string, number>;
}

export interface RestoreGrantClaims extends CommonClaims {
  kind: 'restore';
  pid: string;
  /** The restore lease that keeps the point: the grant ends when the lease does. */
  lease: string;
}

export type GrantClaims = BackupGrantClaims | RestoreGrantClaims;

/** A backup runs for hours, a 4 TB initial replica for days: the session's life bounds it anyway. */
export const BACKUP_GRANT_TTL_MS = 14 * 86_400_000;

const KEY_BYTES = 32;

export class GrantAuthority {
  private constructor(private readonly key: Buffer) {}

  /** A key of this process only (tests, benchmarks): grants die with it. */
  static ephemeral(): GrantAuthority {
    return new GrantAuthority(randomBytes(KEY_BYTES));
  }

  /** The server's grant key from `file` (created, 0600, on first use); in memory without a file. */
  static async open(file?: string): Promise<GrantAuthority> {
    if (!file) return GrantAuthority.ephemeral();
    try {
      const key = Buffer.from((await fs.readFile(file, 'utf8')).trim(), 'base64');
      if (key.length !== KEY_BYTES) throw new Error(`${file} does not hold a ${KEY_BYTES}-byte grant key: delete it to make a new one (running jobs then retry with new grants)`);
      return new GrantAuthority(key);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const key = randomBytes(KEY_BYTES);
    try {
      await fs.writeFile(file, key.toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
      return new GrantAuthority(key);
    } catch (err) {
      // Another process made it first: use theirs.
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return GrantAuthority.open(file);
      throw err;
    }
  }

  private sign(body: string): string {
    return createHmac('sha256', this.key).update(body).digest('base64url');
  }

  issue(claims: Omit<BackupGrantClaims, 'v'> | Omit<RestoreGrantClaims, 'v'>): string {
    const body = Buffer.from(JSON.stringify({ v: 1, ...claims })).toString('base64url');
    return `hvg_${body}.${this.sign(body)}`;
  }

  /** A backup grant for one session of one data source. */
  forSession(o: { job: string; dataSource: string; sessionId: string; basePoint?: string | null; disks: Array<{ diskId: string; virtualSize: number }>; ttlMs?: number }): string {
    const disks: Record<string, number> = Object.create(null) as Record<string, number>;
    for (const d of o.disks) disks[d.diskId] = d.virtualSize;
    return this.issue({ kind: 'backup', job: o.job, ds: o.dataSource, sid: o.sessionId, base: o.basePoint ?? null, disks, exp: Date.now() + (o.ttlMs ?? BACKUP_GRANT_TTL_MS) });
  }

  /** A restore grant for one point, living as long as its lease. */
  forRestore(o: { job: string; dataSource: string; pointId: string; leaseId: string; expiresAt: string }): string {
    return this.issue({ kind: 'restore', job: o.job, ds: o.dataSource, pid: o.pointId, lease: o.leaseId, exp: Date.parse(o.expiresAt) });
  }

  /** The claims of a grant this server minted and that has not expired; else why not. */
  verify(grant: string, now = Date.now()): { claims: GrantClaims } | { refused: string } {
    if (grant.length > 8192 || !grant.startsWith('hvg_')) return { refused: 'not a grant' };
    const dot = grant.indexOf('.', 4);
    if (dot < 0) return { refused: 'not a grant' };
    const body = grant.slice(4, dot);
    const mac = Buffer.from(grant.slice(dot + 1), 'base64url');
    const want = Buffer.from(this.sign(body), 'base64url');
    if (mac.length !== want.length || !timingSafeEqual(mac, want)) return { refused: 'a grant this server did not issue' };
    let claims: GrantClaims;
    try {
      claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as GrantClaims;
    } catch {
      return { refused: 'not a grant' };
    }
    if (claims?.v !== 1 || (claims.kind !== 'backup' && claims.kind !== 'restore')) return { refused: 'a grant of an unknown kind' };
    if (!(claims.exp > now)) return { refused: `a grant that expired at ${new Date(claims.exp).toISOString()}` };
    return { claims };
  }
}
