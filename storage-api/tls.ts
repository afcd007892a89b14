// TLS of the storage API: the server's certificate and key (and, for mutual TLS, the CA that
// signs agent certificates); the client's CA bundle (and its own certificate and key). Files are
// PEM. Errors name the file and what to pass.
import fs from 'node:fs';

export interface StorageServerTls {
  cert: Buffer;
  key: Buffer;
  /** When set, clients must present a certificate signed by this CA (mutual TLS). */
  clientCa?: Buffer;
}

export interface StorageClientTls {
  /** CA bundle that signs the server's certificate (default: Node's public roots). */
  ca?: Buffer;
  /** Client certificate and key, for a server that requires them (mutual TLS). */
  cert?: Buffer;
  key?: Buffer;
}

function readPem(file: string, what: string, flag: string): Buffer {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read the ${what} ${file} (${flag}): ${(err as Error).message}`);
  }
  if (!data.includes('-----BEGIN ')) throw new Error(`${file} (${flag}) is not a PEM file (no -----BEGIN line): give the ${what} in PEM form`);
  return data;
}

export function loadServerTls(o: { certFile?: string; keyFile?: string; clientCaFile?: string }): StorageServerTls | undefined {
  if (!o.certFile && !o.keyFile && !o.clientCaFile) return undefined;
  if (!o.certFile || !o.keyFile) throw new Error('storage API TLS needs both --api-tls-cert and --api-tls-key');
  return {
    cert: readPem(o.certFile, 'server certificate', '--api-tls-cert'),
    key: readPem(o.keyFile, 'server key', '--api-tls-key'),
    clientCa: o.clientCaFile ? readPem(o.clientCaFile, 'client CA', '--api-tls-client-ca') : undefined,
  };
}

export function loadClientTls(o: { caFile?: string; certFile?: string; keyFile?: string }): StorageClientTls | undefined {
  if (!o.caFile && !o.certFile && !o.keyFile) return undefined;
  if (!!o.certFile !== !!o.keyFile) throw new Error('a client certificate needs both --storage-cert and --storage-key');
  return {
    ca: o.caFile ? readPem(o.caFile, 'CA bundle', '--storage-ca') : undefined,
    cert: o.certFile ? readPem(o.certFile, 'client certificate', '--storage-cert') : undefined,
    key: o.keyFile ? readPem(o.keyFile, 'client key', '--storage-key') : undefined,
  };
}

const UNTRUSTED = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED',
]);

/** A clearer error for a failed TLS connection to the storage API; other errors pass through. */
export function explainTlsError(err: NodeJS.ErrnoException & { reason?: string }, url: string): Error {
  const code = err.code ?? '';
  let what: string | undefined;
  if (UNTRUSTED.has(code)) what = `its certificate is not signed by a CA this client trusts (${code}): pass the CA bundle with --storage-ca FILE (or HVPROTECT_STORAGE_CA)`;
  else if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') what = `its certificate is not valid now (${code})`;
  else if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') what = `its certificate does not name this host (${err.reason ?? code}): connect by a name the certificate lists`;
  else if (/CERTIFICATE_REQUIRED|ALERT_HANDSHAKE_FAILURE|ALERT_BAD_CERTIFICATE|ALERT_UNKNOWN_CA/i.test(code) || /certificate required|alert (bad certificate|unknown ca)/i.test(err.message)) {
    what = `the server requires a client certificate signed by its client CA (${code || err.message}): pass --storage-cert FILE --storage-key FILE`;
  } else if (url.startsWith('https:') && (code === 'ECONNRESET' || err.message === 'socket hang up')) {
    // TLS 1.3: the server checks the client certificate after the client's handshake is done and
    // then closes the connection, so the client only sees the reset.
    what = `the server closed the connection after the handshake (${code || err.message}); a server with --api-tls-client-ca does this to a client without a certificate signed by its client CA: pass --storage-cert FILE --storage-key FILE`;
  } else if (code === 'EPROTO' && /wrong version number|packet length too long/i.test(err.message)) what = 'TLS and plain HTTP mixed up: use https:// only when the server has --api-tls-cert';
  if (!what) return err;
  return Object.assign(new Error(`TLS connection to the storage API at ${url} refused: ${what}`), { code, cause: err });
}
