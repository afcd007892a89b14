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

  /** Issues a new token (replacing a previous one of the same name); returns it, once. */
  async issue(name: string, role: TokenRole): Promise<string> {
    if (!NAME.test(name)) throw new RepositoryError('INVALID_ARGUMENT', `token name ${JSON.stringify(name)}`, 'a host or person name: 1-128 of A-Z a-z 0-9 _ . @ -');
    if (role !== 'agent' && role !== 'admin') throw new RepositoryError('INVALID_ARGUMENT', `role ${String(role)}`, 'agent or admin');
    const token = `hvp_${randomBytes(32).toString('base64url')}`;
    this.records = this.records.filter((r) => r.name !== name);
    this.records.push({ name, role, sha256: hashToken(token), createdAt: new Date().toISOString() });
    await this.save();
    return token;
  }

  async revoke(name: string): Promise<void> {
    const r = this.records.find((x) => x.name === name && !x.revokedAt);
    if (!r) throw new RepositoryError('NOT_FOUND', `no active token named ${name}`, 'list tokens to see the names');
    r.revokedAt = new Date().toISOString();
    await this.save();
  }

  list(): Array<Omit<TokenRecord, 'sha256'>> {
    return this.records.map(({ sha256: _omit, ...rest }) => rest);
  }

  authenticate(token: string | undefined): TokenIdentity | undefined {
    if (!token || !token.startsWith('hvp_') || token.length > 200) return undefined;
    const h = Buffer.from(hashToken(token), 'hex');
    for (const r of this.records) {
      if (!r.revokedAt && timingSafeEqual(h, Buffer.from(r.sha256, 'hex'))) return { name: r.name, role: r.role };
    }
    return undefined;
  }
}
