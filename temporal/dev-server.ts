// The embedded Temporal server: `temporal server start-dev` from the pinned Temporal CLI,
// with a SQLite file so that workflows survive restarts, and the Web UI.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { connectTemporal } from './connection';
import { devServerSearchAttributeFlags, registerSearchAttributes } from './search-attributes';
import { projectRoot } from './project-root';

export class DevServerError extends Error {
  override name = 'DevServerError';
}

interface TemporalCliModule {
  ensureTemporalCli(): string;
  findTemporalCli(): string | undefined;
  TEMPORAL_CLI_VERSION: string;
}

function cliModule(): TemporalCliModule {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(path.join(projectRoot(), 'scripts', 'temporal-cli.js')) as TemporalCliModule;
}

/** Path of the Temporal CLI; installs the pinned one into .tools/ unless `install` is false. */
export function temporalCliPath(opts: { install?: boolean } = {}): string {
  const mod = cliModule();
  try {
    const found = opts.install === false ? mod.findTemporalCli() : mod.ensureTemporalCli();
    if (!found) {
      throw new DevServerError(
        `the Temporal CLI ${mod.TEMPORAL_CLI_VERSION} is not installed: run \`npm run temporal:install\` ` +
          'or put `temporal` on PATH',
      );
    }
    return found;
  } catch (err) {
    if (err instanceof DevServerError) throw err;
    throw new DevServerError((err as Error).message);
  }
}

/**
 * A port nothing listens on, for a listener we start later. Chosen below the kernel's ephemeral
 * range (ip_local_port_range), not by binding port 0: a port from that range can be taken again
 * before our listener binds it, as the local end of any outgoing connection or by the Temporal
 * CLI's own choice of free ports for its internal services (seen: the Web UI of a second
 * `hvprotect dev` start failed with "address already in use" on the port chosen for it).
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const [low] = ephemeralRange();
  const floor = 10_000;
  const span = Math.max(1, low - floor);
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = floor + Math.floor(Math.random() * span);
    if (await canListen(host, port)) return port;
  }
  return kernelPort(host);
}

function ephemeralRange(): [number, number] {
  try {
    const [a, b] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (a > 10_500 && b >= a) return [a, b];
  } catch {
    // not Linux: fall through
  }
  return [49152, 65535];
}

function canListen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

function kernelPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Rejects with a clear message if something already listens on host:port. */
export async function assertPortFree(host: string, port: number, what: string, flag: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        new DevServerError(
          err.code === 'EADDRINUSE'
            ? `port ${port} on ${host} (${what}) is already in use: stop what listens there ` +
                `(\`ss -ltnp 'sport = :${port}'\` shows it), or choose another with ${flag}`
            : `cannot listen on ${host}:${port} for ${what}: ${err.message}`,
        ),
      );
    });
    srv.listen(port, host, () => srv.close(() => resolve()));
  });
}

export interface DevServerOptions {
  /** SQLite file; the folder is created. Reusing it resumes all workflows. */
  dbFile: string;
  ip?: string;
  port?: number;
  uiPort?: number;
  headless?: boolean;
  /** Where the server's own output goes (appended). Default: next to the database. */
  logFile?: string;
  /** Cold machines take longer than the SDK's 5 s; default 90 s. */
  readyTimeoutMs?: number;
  namespace?: string;
  cliPath?: string;
  /** Pass our search attributes as start-dev flags (fresh databases only); default true. */
  searchAttributeFlags?: boolean;
  /** Register our search attributes through the operator API once ready; default true. */
  registerSearchAttributes?: boolean;
  /** More namespaces to create at start (tests isolate parallel files with them). */
  extraNamespaces?: string[];
  /** The codec server the Web UI decodes payloads with (`hvprotect codec-server`). */
  uiCodecEndpoint?: string;
  /** SQLite's sync level (default HVPROTECT_TEMPORAL_SYNC, else 'normal'): see temporalSqlitePragmas. */
  sqliteSync?: 'normal' | 'full';
}

/**
 * The embedded server's SQLite in WAL mode. SQLite's own default (a rollback journal, synchronous
 * FULL) fsyncs the journal, the database and the folder at every commit, and every workflow task
 * and activity hand-off is a commit: a no-change backup spent ~0.1 s of its ~0.38 s there
 * (bench/backup-e2e). WAL with synchronous NORMAL writes each commit to the log and syncs at
 * checkpoints: a killed Temporal process loses nothing (the restart and crash suites kill it), and
 * a power cut can lose the last commits but never corrupts the database. Temporal then redoes the
 * steps whose ends were lost, which are idempotent here (the crash matrix kills the server after
 * each step): the repository, fsynced at every commit, stays the record of what is backed up.
 * HVPROTECT_TEMPORAL_SYNC=full keeps every commit durable (WAL, synced at each commit).
 */
export function temporalSqlitePragmas(sync: string | undefined = process.env.HVPROTECT_TEMPORAL_SYNC): string[] {
  const level = (sync ?? 'normal').toLowerCase();
  if (level !== 'normal' && level !== 'full') {
    throw new Error(`HVPROTECT_TEMPORAL_SYNC=${sync}: give "normal" (the default: synced at checkpoints) or "full" (synced at every commit)`);
  }
  return ['journal_mode=wal', `synchronous=${level}`];
}

export interface DevServer {
  address: string;
  uiUrl?: string;
  namespace: string;
  dbFile: string;
  process: ChildProcess;
  /** SIGTERM, then SIGKILL after a grace period. */
  stop(): Promise<void>;
  /** SIGKILL at once (fault tests). */
  kill(): Promise<void>;
}

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  const port = opts.port ?? 7233;
  const uiPort = opts.uiPort ?? port + 1000;
  const namespace = opts.namespace ?? 'default';
  const cli = opts.cliPath ?? temporalCliPath();
  await assertPortFree(ip, port, 'Temporal frontend gRPC', '--temporal-port');
  if (!opts.headless) await assertPortFree(ip, uiPort, 'Temporal Web UI', '--ui-port');
  fs.mkdirSync(path.dirname(path.resolve(opts.dbFile)), { recursive: true });
  const logFile = opts.logFile ?? `${opts.dbFile}.server.log`;
  const logFd = fs.openSync(logFile, 'a');
  const args = [
    'server',
    'start-dev',
    '--ip',
    ip,
    '--port',
    String(port),
    '--db-filename',
    opts.dbFile,
    ...temporalSqlitePragmas(opts.sqliteSync).flatMap((p) => ['--sqlite-pragma', p]),
    '--log-level',
    'warn',
    '--namespace',
    namespace,
    ...(opts.extraNamespaces ?? []).flatMap((n) => ['--namespace', n]),
    ...(opts.searchAttributeFlags === false ? [] : devServerSearchAttributeFlags()),
  ];
  if (opts.headless) args.push('--headless');
  else args.push('--ui-port', String(uiPort));
  if (opts.uiCodecEndpoint && !opts.headless) args.push('--ui-codec-endpoint', opts.uiCodecEndpoint);
  const child = spawn(cli, args, { stdio: ['ignore', logFd, logFd], detached: false });
  fs.closeSync(logFd);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exitPromise = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    }),
  );
  const address = `${ip}:${port}`;
  const stop = async (signal: NodeJS.Signals) => {
    if (exited) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exitPromise;
    clearTimeout(timer);
  };
  const server: DevServer = {
    address,
    uiUrl: opts.headless ? undefined : `http://${ip}:${uiPort}`,
    namespace,
    dbFile: opts.dbFile,
    process: child,
    stop: () => stop('SIGTERM'),
    kill: () => stop('SIGKILL'),
  };
  try {
    await waitUntilReady(server, opts.readyTimeoutMs ?? 90_000, () => exited, logFile, opts.registerSearchAttributes !== false, opts.extraNamespaces ?? []);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

function tail(file: string, lines = 5): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}

async function waitUntilReady(
  server: DevServer,
  timeoutMs: number,
  exited: () => { code: number | null; signal: NodeJS.Signals | null } | undefined,
  logFile: string,
  register: boolean,
  extraNamespaces: string[],
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  while (Date.now() < deadline) {
    const ex = exited();
    if (ex) {
      throw new DevServerError(
        `temporal server start-dev exited (code ${ex.code}, signal ${ex.signal}) before it was ready: ${tail(logFile)}`,
      );
    }
    try {
      const connection = await connectTemporal({ address: server.address, connectTimeout: 2_000 });
      try {
        await connection.workflowService.describeNamespace({ namespace: server.namespace });
        for (const ns of [server.namespace, ...extraNamespaces]) {
          await connection.workflowService.describeNamespace({ namespace: ns });
          if (register) await registerSearchAttributes(connection, ns, { timeoutMs: Math.max(5_000, deadline - Date.now()) });
        }
        return;
      } finally {
        await connection.close();
      }
    } catch (err) {
      lastError = (err as Error).message.split('\n')[0];
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  throw new DevServerError(
    `the Temporal dev server at ${server.address} was not ready after ${Math.round(timeoutMs / 1000)} s ` +
      `(last error: ${lastError}); its log: ${logFile}`,
  );
}
