// Bearer tokens of the storage API: one per host agent, plus admin tokens for management.
// A token is "hvp_" + 32 random bytes (base64url): with 256 bits of entropy a plain SHA-256 is
// enough to store it (no salt or scrypt needed: there is nothing to brute-force). The file keeps
// only the hashes; a token is shown once, when issued. Revoking takes effect at once.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { writeFileDurable } from '../repository/durable';
import { RepositoryError, isNotFound } from '../repository/errors';

export type TokenRole = 'agent' | 'admin';

export interface TokenRecord {
  /** Who holds it: the agent's host name, or an admin's name. */
  name: string;
  role: TokenRole;
  sha256: string;
  createdAt: string;
  revokedAt?: string;
  /** Rotated: still valid until the holder first uses the token issued after it. */
  retiring?: boolean;
}

export interface TokenIdentity {
  name: string;
  role: TokenRole;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$/;

function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export class TokenStore {
  private constructor(
    private readonly file: string | undefined,
    private records: TokenRecord[],
  ) {}

  /** A store kept in `file` (JSON, written durably), or in memory when no file is given. */
  static async open(file?: string): Promise<TokenStore> {
    if (!file) return new TokenStore(undefined, []);
    try {
      return new TokenStore(file, JSON.parse(await fs.readFile(file, 'utf8')) as TokenRecord[]);
    } catch (err) {
      if (isNotFound(err)) return new TokenStore(file, []);
      throw err;
    }
  }

  private async save(): Promise<void> {
    if (this.file) await writeFileDurable(this.file, JSON.stringify(this.records, null, 2) + '\n');
  }

  /**
   * Issues a token for `name`; returns it, once. A name that holds a live token is refused unless
   * `rotate`: then the old token stays valid until the new one is first used (the running agent
   * keeps working until it is given the new one), and is revoked at that moment.
   */
  async issue(name: string, role: TokenRole, opts: { rotate?: boolean } = {}): Promise<string> {
    if (!NAME.test(name)) throw new RepositoryError('INVALID_ARGUMENT', `token name ${JSON.stringify(name)}`, 'a host or person name: 1-128 of A-Z a-z 0-9 _ . @ -');
    if (role !== 'agent' && role !== 'admin') throw new RepositoryError('INVALID_ARGUMENT', `role ${String(role)}`, 'agent or admin');
    const live = this.records.filter((r) => r.name === name && !r.revokedAt);
    if (live.length > 0 && !opts.rotate) {
      const newest = live[live.length - 1];
      throw new RepositoryError('CONFLICT', `${name} holds a live ${newest.role} token (issued ${newest.createdAt})`,
        `issuing another would cut off the running agent: pass --rotate (the old token stays valid until the new one is used), or revoke it first (hvprotect token revoke ${name})`);
    }
    const token = `hvp_${randomBytes(32).toString('base64url')}`;
    // Only the newest old token lives on while rotating; older ones of an unfinished rotation end now.
    const now = new Date().toISOString();
    for (const r of live) {
      if (r === live[live.length - 1]) r.retiring = true;
      else r.revokedAt = now;
    }
    this.records = this.records.filter((r) => r.name !== name || !r.revokedAt);
    this.records.push({ name, role, sha256: hashToken(token), createdAt: now });
    await this.save();
    return token;
  }

  async revoke(name: string): Promise<void> {
    const live = this.records.filter((x) => x.name === name && !x.revokedAt);
    if (live.length === 0) throw new RepositoryError('NOT_FOUND', `no active token named ${name}`, 'list tokens to see the names');
    const now = new Date().toISOString();
    for (const r of live) r.revokedAt = now; // a rotation in progress: both the old and the new
    await this.save();
  }

  /** The holder used its new token: the one it rotated from ends now. */
  private retireRotated(name: string): void {
    const old = this.records.filter((r) => r.name === name && r.retiring && !r.revokedAt);
    if (old.length === 0) return;
    const now = new Date().toISOString();
    for (const r of old) r.revokedAt = now;
    void this.save().catch(() => undefined); // in memory it is revoked already; a failed save leaves it for the next one
  }

  /** Whether `name` holds a token that is not revoked. */
  isLive(name: string): boolean {
    return this.records.some((r) => r.name === name && !r.revokedAt);
  }

  list(): Array<Omit<TokenRecord, 'sha256'>> {
    return this.records.map(({ sha256: _omit, ...rest }) => rest);
  }

  authenticate(token: string | undefined): TokenIdentity | undefined {
    if (!token || !token.startsWith('hvp_') || token.length > 200) return undefined;
    const h = Buffer.from(hashToken(token), 'hex');
    for (const r of this.records) {
      if (!r.revokedAt && timingSafeEqual(h, Buffer.from(r.sha256, 'hex'))) {
        if (!r.retiring) this.retireRotated(r.name);
        return { name: r.name, role: r.role };
      }
    }
    return undefined;
  }
}
