// A self-made PKI for the TLS tests, made with the openssl CLI: a CA, a server certificate for
// 127.0.0.1 / localhost, a client certificate signed by the CA, and a second, unrelated CA.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface Pki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A CA that signed nothing here: trusting it alone must fail. */
  otherCaCert: string;
  /** A client certificate signed by the other CA. */
  rogueClientCert: string;
  rogueClientKey: string;
}

function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function makeCa(dir: string, name: string): void {
  openssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`,
    '-days', '2', '-subj', `/CN=hvprotect test ${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
}

function makeLeaf(dir: string, ca: string, name: string, ext: string): void {
  openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
}

/** `extraNames`: more subjectAltName entries of the server certificate, e.g. ['DNS:temporal.test']. */
export function makePki(dir: string, extraNames: string[] = []): Pki {
  fs.mkdirSync(dir, { recursive: true });
  makeCa(dir, 'ca');
  makeCa(dir, 'other-ca');
  makeLeaf(dir, 'ca', 'server', `subjectAltName=${['IP:127.0.0.1', 'DNS:localhost', ...extraNames].join(',')}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
  makeLeaf(dir, 'ca', 'client', 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  makeLeaf(dir, 'other-ca', 'rogue', 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  const p = (f: string) => path.join(dir, f);
  return {
    dir, caCert: p('ca.crt'), serverCert: p('server.crt'), serverKey: p('server.key'), clientCert: p('client.crt'), clientKey: p('client.key'),
    otherCaCert: p('other-ca.crt'), rogueClientCert: p('rogue.crt'), rogueClientKey: p('rogue.key'),
  };
}
