// hvprotect's payloads (workflow inputs and results, activity arguments, memos, summaries,
// failure messages) are sealed with AES-256-GCM before they reach Temporal, so VM names, configs
// and paths are not readable in its database. Keys live in a key file (mode 0600) holding
// several keys, each with an id: the newest seals, all open; the id travels in each payload's
// metadata, so rotating adds a key and old histories still open.
//
// Key file (JSON):
//   { "format": "hvprotect-payload-keys/1",
//     "keys": [ { "id": "pk-20261130-1a2b3c", "key": "<32 bytes, base64>", "createdAt": "…" }, … ] }
// The last key is the newest. Sealed payload: metadata encoding "binary/encrypted",
// "encryption-key-id" = the key's id, "encryption-cipher" = "AES-256-GCM"; data = 12-byte nonce,
// ciphertext of the original Payload (protobuf), 16-byte tag. The key id is authenticated too.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';

export const PAYLOAD_KEYS_FORMAT = 'hvprotect-payload-keys/1';
export const ENCRYPTED_ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';
const CIPHER_METADATA = 'encryption-cipher';
const CIPHER = 'AES-256-GCM';
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** A key file that cannot be used (missing, unreadable, malformed, too open). */
export class PayloadKeyFileError extends Error {
  override name = 'PayloadKeyFileError';
}

/** A payload sealed with a key the key file does not hold. */
export class PayloadKeyMissing extends Error {
  override name = 'PayloadKeyMissing';
  constructor(readonly keyId: string, readonly keyFile: string, held: string[]) {
    super(
      `a Temporal payload was encrypted with payload key "${keyId}", which the key file ${keyFile} does not hold ` +
        `(it holds ${held.join(', ') || 'none'}): use the key file the payloads were written with, or add that key back ` +
        '(rotation keeps old keys; never remove a key while histories sealed with it may be read)',
    );
  }
}

/** A sealed payload reached a process with no key file at all. */
export class PayloadKeyNotConfigured extends Error {
  override name = 'PayloadKeyNotConfigured';
  constructor(readonly keyId: string) {
    super(
      `a Temporal payload was encrypted with payload key "${keyId}", and this process has no payload key file: ` +
        'pass --payload-key-file FILE or set HVPROTECT_PAYLOAD_KEY_FILE (the file the protection server uses)',
    );
  }
}

/** A sealed payload that does not open: tampered with, truncated, or not ours. */
export class PayloadDecryptFailed extends Error {
  override name = 'PayloadDecryptFailed';
}

export interface PayloadKey {
  id: string;
  key: Buffer;
  createdAt: string;
}

interface KeyFileBody {
  format: string;
  keys: { id: string; key: string; createdAt: string }[];
}

function newKey(): PayloadKey {
  const now = new Date();
  const stamp = now.toISOString().slice(0, 10).replace(/-/g, '');
  return { id: `pk-${stamp}-${randomBytes(3).toString('hex')}`, key: randomBytes(32), createdAt: now.toISOString() };
}

/** The keys of a key file: the newest seals, every one opens. */
export class PayloadKeyring {
  private readonly byId: Map<string, PayloadKey>;

  constructor(readonly keys: PayloadKey[], readonly file = '(in memory)') {
    if (keys.length === 0) throw new PayloadKeyFileError(`payload key file ${file} holds no key: create one with \`hvprotect codec key create ${file}\``);
    this.byId = new Map(keys.map((k) => [k.id, k]));
    if (this.byId.size !== keys.length) throw new PayloadKeyFileError(`payload key file ${file} holds two keys with one id`);
  }

  get newest(): PayloadKey {
    return this.keys[this.keys.length - 1];
  }

  get ids(): string[] {
    return this.keys.map((k) => k.id);
  }

  find(id: string): PayloadKey | undefined {
    return this.byId.get(id);
  }

  static load(file: string): PayloadKeyring {
    const abs = path.resolve(file);
    let text: string;
    let stat: fs.Stats;
    try {
      stat = fs.statSync(abs);
      text = fs.readFileSync(abs, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new PayloadKeyFileError(
        code === 'ENOENT'
          ? `payload key file ${abs} does not exist: create it with \`hvprotect codec key create ${file}\``
          : `cannot read payload key file ${abs}: ${(err as Error).message}`,
      );
    }
    if (process.platform !== 'win32' && (stat.mode & 0o077) !== 0) {
      throw new PayloadKeyFileError(
        `payload key file ${abs} is readable by others (mode ${(stat.mode & 0o777).toString(8)}): \`chmod 600 ${file}\``,
      );
    }
    let body: KeyFileBody;
    try {
      body = JSON.parse(text) as KeyFileBody;
    } catch {
      throw new PayloadKeyFileError(`payload key file ${abs} is not JSON (expected ${PAYLOAD_KEYS_FORMAT} from \`hvprotect codec key create\`)`);
    }
    if (body?.format !== PAYLOAD_KEYS_FORMAT || !Array.isArray(body.keys)) {
      throw new PayloadKeyFileError(`payload key file ${abs} is not a ${PAYLOAD_KEYS_FORMAT} file`);
    }
    const keys = body.keys.map((k, i) => {
      const key = typeof k?.key === 'string' ? Buffer.from(k.key, 'base64') : Buffer.alloc(0);
      if (typeof k?.id !== 'string' || !KEY_ID.test(k.id)) throw new PayloadKeyFileError(`payload key file ${abs}: key ${i + 1} has no valid id`);
      if (key.length !== 32) throw new PayloadKeyFileError(`payload key file ${abs}: key "${k.id}" is not 32 bytes of base64`);
      return { id: k.id, key, createdAt: String(k.createdAt ?? '') };
    });
    return new PayloadKeyring(keys, abs);
  }

  /** Writes a key file with one new key; refuses to replace an existing file. */
  static create(file: string): PayloadKeyring {
    const abs = path.resolve(file);
    if (fs.existsSync(abs)) throw new PayloadKeyFileError(`payload key file ${abs} already exists: rotate it with \`hvprotect codec key rotate ${file}\``);
    const ring = new PayloadKeyring([newKey()], abs);
    ring.save();
    return ring;
  }

  /** Adds a new newest key (the old ones stay, so what they sealed still opens). */
  static rotate(file: string): PayloadKeyring {
    const old = PayloadKeyring.load(file);
    const ring = new PayloadKeyring([...old.keys, newKey()], old.file);
    ring.save();
    return ring;
  }

  private save(): void {
    const body: KeyFileBody = {
      format: PAYLOAD_KEYS_FORMAT,
      keys: this.keys.map((k) => ({ id: k.id, key: k.key.toString('base64'), createdAt: k.createdAt })),
    };
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    fs.chmodSync(tmp, 0o600);
    fs.renameSync(tmp, this.file);
  }
}

const enc = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array | null | undefined) => (b ? Buffer.from(b).toString('utf8') : undefined);

/** The Temporal PayloadCodec: seals with the newest key, opens with the one named in the payload. */
export class AesGcmPayloadCodec implements PayloadCodec {
  constructor(readonly keyring: PayloadKeyring) {}

  static fromFile(file: string): AesGcmPayloadCodec {
    return new AesGcmPayloadCodec(PayloadKeyring.load(file));
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => this.seal(p));
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => this.open(p));
  }

  seal(payload: Payload): Payload {
    const { id, key } = this.keyring.newest;
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', key, nonce);
    cipher.setAAD(Buffer.from(`hvprotect-payload/1 ${id}`));
    const plain = temporal.api.common.v1.Payload.encode(payload).finish();
    const sealed = Buffer.concat([nonce, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return {
      metadata: { encoding: enc(ENCRYPTED_ENCODING), [KEY_ID_METADATA]: enc(id), [CIPHER_METADATA]: enc(CIPHER) },
      data: sealed,
    };
  }

  open(payload: Payload): Payload {
    // Payloads not sealed by us (e.g. from a client without a codec) pass through.
    if (str(payload.metadata?.encoding) !== ENCRYPTED_ENCODING) return payload;
    const id = str(payload.metadata?.[KEY_ID_METADATA]);
    if (!id) throw new PayloadDecryptFailed('an encrypted Temporal payload names no encryption-key-id');
    const k = this.keyring.find(id);
    if (!k) throw new PayloadKeyMissing(id, this.keyring.file, this.keyring.ids);
    const data = Buffer.from(payload.data ?? new Uint8Array());
    if (data.length < NONCE_BYTES + TAG_BYTES) throw new PayloadDecryptFailed(`an encrypted Temporal payload (key "${id}") is truncated (${data.length} bytes)`);
    const decipher = createDecipheriv('aes-256-gcm', k.key, data.subarray(0, NONCE_BYTES));
    decipher.setAAD(Buffer.from(`hvprotect-payload/1 ${id}`));
    decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
    let plain: Buffer;
    try {
      plain = Buffer.concat([decipher.update(data.subarray(NONCE_BYTES, data.length - TAG_BYTES)), decipher.final()]);
    } catch {
      throw new PayloadDecryptFailed(`an encrypted Temporal payload (key "${id}") failed authentication: it was altered, or sealed by another key with that id`);
    }
    const decoded = temporal.api.common.v1.Payload.decode(plain);
    return { metadata: decoded.metadata, data: decoded.data };
  }
}

/** The codec of a process without a key: payloads go out plain, and a sealed one fails saying what is missing. */
export class NoPayloadKeyCodec implements PayloadCodec {
  async encode(payloads: Payload[]): Promise<Payload[]> {
    return payloads;
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    for (const p of payloads) {
      if (str(p.metadata?.encoding) === ENCRYPTED_ENCODING) throw new PayloadKeyNotConfigured(str(p.metadata?.[KEY_ID_METADATA]) ?? '?');
    }
    return payloads;
  }
}
