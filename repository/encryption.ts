// Encryption at rest of chunk payloads: AES-256-GCM with a key the user holds (a key file given to
// the server), as Proxmox Backup Server and restic offer. Chunks keep their names (SHA-256 of the
// plaintext, computed by the agents): a name reveals whether two chunks are equal, never what they
// hold (see README "Encryption at rest").
//
// Key file (`hvprotect key generate > F`): JSON
//   { "format": "hvprotect-key/1", "algorithm": "aes-256-gcm", "key": "<32 bytes base64>", "createdAt": "…" }
// The repository `config` records { algorithm, keyFingerprint }: the fingerprint is
// HMAC-SHA256(master key, "hvprotect key fingerprint"), hex; it identifies the key without revealing it.
// Chunk payloads are sealed with a subkey HMAC-SHA256(master key, "hvprotect chunk encryption").
//
// Sealed payload (the chunk file's payload when its codec byte has ENCRYPTED_FLAG set):
//   12 bytes random nonce | ciphertext of the (compressed) payload | 16 bytes GCM tag
// Additional authenticated data: the chunk file header bytes 0..12 (magic, codec, raw length) and
// the 32-byte digest (the file name), so a sealed payload cannot be moved under another name.
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { RepositoryError } from './errors';

export const KEY_FORMAT = 'hvprotect-key/1';
export const ENCRYPTION_ALGORITHM = 'aes-256-gcm';
export const NONCE_SIZE = 12;
export const TAG_SIZE = 16;
export const SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE;

export interface KeyFile {
  format: typeof KEY_FORMAT;
  algorithm: typeof ENCRYPTION_ALGORITHM;
  key: string;
  createdAt: string;
}

/** What the repository config records about its encryption. */
export interface EncryptionConfig {
  algorithm: typeof ENCRYPTION_ALGORITHM;
  keyFingerprint: string;
}

export class EncryptionKey {
  /** The subkey that seals chunk payloads. */
  readonly chunkKey: Buffer;
  readonly fingerprint: string;

  constructor(master: Buffer) {
    if (master.length !== 32) throw new RepositoryError('INVALID_ARGUMENT', `encryption key of ${master.length} bytes`, 'an AES-256 key is 32 bytes: make one with `hvprotect key generate > F`');
    this.chunkKey = createHmac('sha256', master).update('hvprotect chunk encryption').digest();
    this.fingerprint = createHmac('sha256', master).update('hvprotect key fingerprint').digest('hex');
  }

  static generate(): { key: EncryptionKey; file: string } {
    const master = randomBytes(32);
    const body: KeyFile = { format: KEY_FORMAT, algorithm: ENCRYPTION_ALGORITHM, key: master.toString('base64'), createdAt: new Date().toISOString() };
    return { key: new EncryptionKey(master), file: JSON.stringify(body, null, 2) + '\n' };
  }

  static parse(text: string, where = 'key file'): EncryptionKey {
    let body: Partial<KeyFile>;
    try {
      body = JSON.parse(text) as Partial<KeyFile>;
    } catch {
      throw new RepositoryError('INVALID_ARGUMENT', `${where} is not an hvprotect key file`, 'make one with `hvprotect key generate > F`');
    }
    if (body?.format !== KEY_FORMAT || body.algorithm !== ENCRYPTION_ALGORITHM || typeof body.key !== 'string') {
      throw new RepositoryError('INVALID_ARGUMENT', `${where} is not an hvprotect key file (format ${String(body?.format)})`, 'make one with `hvprotect key generate > F`');
    }
    return new EncryptionKey(Buffer.from(body.key, 'base64'));
  }

  static async load(file: string): Promise<EncryptionKey> {
    let text: string;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      throw new RepositoryError('NOT_FOUND', `cannot read the encryption key file ${file}: ${(err as Error).message}`, 'give the key file the repository was created with');
    }
    return EncryptionKey.parse(text, file);
  }
}

function aad(header12: Buffer, digest: string): Buffer {
  return Buffer.concat([header12, Buffer.from(digest, 'hex')]);
}

/** nonce | ciphertext | tag */
export function seal(chunkKey: Buffer, header12: Buffer, digest: string, payload: Buffer): Buffer {
  const nonce = randomBytes(NONCE_SIZE);
  const c = createCipheriv('aes-256-gcm', chunkKey, nonce);
  c.setAAD(aad(header12, digest));
  const body = c.update(payload);
  const final = c.final();
  return Buffer.concat([nonce, body, final, c.getAuthTag()]);
}

/** Throws when the tag does not authenticate (wrong key, or a changed byte). */
export function open(chunkKey: Buffer, header12: Buffer, digest: string, sealed: Buffer): Buffer {
  if (sealed.length < SEAL_OVERHEAD) throw new Error(`sealed payload of ${sealed.length} bytes is shorter than nonce and tag`);
  const nonce = sealed.subarray(0, NONCE_SIZE);
  const tag = sealed.subarray(sealed.length - TAG_SIZE);
  const d = createDecipheriv('aes-256-gcm', chunkKey, nonce);
  d.setAAD(aad(header12, digest));
  d.setAuthTag(tag);
  const body = d.update(sealed.subarray(NONCE_SIZE, sealed.length - TAG_SIZE));
  try {
    return Buffer.concat([body, d.final()]);
  } catch {
    throw new Error('AES-256-GCM authentication failed (a changed byte, or another key)');
  }
}
