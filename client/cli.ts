#!/usr/bin/env node
// hvprotect: the command-line tool and the two processes (server, agent).
import '../workers/young-generation'; // first: before any module allocates
import fs from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { Client } from '@temporalio/client';
import { createLogger } from '../log/logger';
import { connectClient, loadTemporalSettings } from '../temporal/connection';
import { listServers, protectionOwners } from './protection';
import { livePollers } from '../temporal/pollers';
import { hostTaskQueue } from '../temporal/task-queues';
import { serversOfAgent } from '../workers/agent';
import { startServer } from '../workers/server';
import { installRuntime } from '../workers/runtime';
import path from 'node:path';
import { startDevStack } from './dev';
import { EXIT_USAGE, UsageError, reportAndExit } from './errors';
import { startAgent } from '../workers/agent';
import { configuredRestoreRoots } from '../activities/host/restore-target';
import { LabHypervisor } from '../hypervisor/lab';
import { HyperVHypervisor } from '../hypervisor/hyperv';
import { positiveInt, registerCommands } from './commands';
import { EncryptionKey } from '../repository/encryption';
import { parseShadowStorageSize } from '../repository/shadow-storage';
import { loadClientTls, loadServerTls } from '../storage-api/tls';
import { labCommand } from '../hypervisor/lab/cli';
import { AesGcmPayloadCodec, PayloadKeyring } from '../temporal/payload-codec';
import { startCodecServer } from '../temporal/codec-server';
import { adoptRuns, drainServer, pickServer, resumeServer, upgradeStatus } from './upgrade';
import { describeServerDeployment, openPinnedRuns } from '../temporal/versioning';
import os from 'node:os';

function portOrZero(value: string): number {
  return value === '0' ? 0 : port(value);
}

function durationMs(value: string): number {
  const m = /^(\d+)(s|m|h)$/.exec(value.trim());
  if (!m || Number(m[1]) === 0) throw new InvalidArgumentError('a duration such as 90s, 30m or 2h');
  return Number(m[1]) * { s: 1_000, m: 60_000, h: 3_600_000 }[m[2] as 's' | 'm' | 'h'];
}

function hypervisorKind(value: string): 'lab' | 'hyperv' {
  if (value !== 'lab' && value !== 'hyperv') throw new InvalidArgumentError('lab or hyperv.');
  return value;
}

function readSecretFile(file: string, flag: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new UsageError(`${flag} ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

function diskSize(value: string): number {
  const s = (() => {
    try {
      return parseShadowStorageSize(value);
    } catch {
      return undefined;
    }
  })();
  if (s?.kind === 'bytes') return s.bytes;
  throw new InvalidArgumentError('a disk size in bytes or with a unit KB MB GB TB (powers of 1024): 2TB, 512GB');
}

function pointsPerHour(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 3600) throw new InvalidArgumentError('give a whole number of points from 1 to 3600.');
  return n;
}

function port(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 65535) throw new InvalidArgumentError('a port is a number from 1 to 65535.');
  return n;
}

/** Runs until SIGINT/SIGTERM, then stops cleanly; a second signal exits at once. */
function untilSignal(stop: () => Promise<void>, log: (msg: string) => void): Promise<void> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (sig: NodeJS.Signals) => {
      if (stopping) process.exit(130);
      stopping = true;
      log(`${sig}: stopping (press Ctrl-C again to exit at once)`);
      stop().then(resolve, (err) => reportAndExit(err));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

function collectServer(value: string, prev: { id: string; file: string }[]): { id: string; file: string }[] {
  const m = /^([a-z0-9][a-z0-9-]{0,31})=(.+)$/.exec(value);
  if (!m) throw new InvalidArgumentError('give ID=TOKEN_FILE, e.g. dpm01=/etc/hvprotect/dpm01.token.');
  return [...prev, { id: m[1], file: m[2] }];
}

function collectServerUrl(value: string, prev: Record<string, string>): Record<string, string> {
  const m = /^([a-z0-9][a-z0-9-]{0,31})=(https?:\/\/.+)$/.exec(value);
  if (!m) throw new InvalidArgumentError('give ID=URL, e.g. dpm01=https://dpm01:8780.');
  return { ...prev, [m[1]]: m[2] };
}

interface DoctorReport {
  servers: Awaited<ReturnType<typeof listServers>>;
  agents: { host: string; servers: string[] }[];
  problems: string[];
  selfCheck?: { server: string; ms: number };
}

/** What doctor finds: servers, agents, and what is wrong with them. */
async function doctor(client: Client, namespace: string, timeoutSeconds: number): Promise<DoctorReport> {
  const servers = await listServers(client);
  const problems: string[] = [];
  if (!servers.length) problems.push('no protection server has registered: start one with `hvprotect server` (or `npm start`)');
  for (const [owner, dataSources] of await protectionOwners(client)) {
    if (!servers.some((s) => s.id === owner && s.running)) problems.push(`server ${owner} owns ${dataSources.join(', ')} but is not running: their backups wait until it returns (or \`hvprotect protect move VM --to OTHER\`)`);
  }
  for (const sv of servers) {
    const deployment = await describeServerDeployment(client, namespace, sv.id).catch(() => undefined);
    if (deployment?.versions.length && !deployment.currentBuildId) {
      problems.push(`server ${sv.id} is drained for an upgrade: its new jobs wait until a build of it starts (or \`hvprotect upgrade resume --server ${sv.id}\`)`);
    }
    const stranded = (await openPinnedRuns(client, sv.id).catch(() => [])).filter((r) => r.buildId !== (sv.running ? sv.buildId : undefined) && r.buildId !== deployment?.currentBuildId);
    for (const b of new Set(stranded.map((r) => r.buildId))) {
      const n = stranded.filter((r) => r.buildId === b).length;
      problems.push(`${n} job(s) of ${sv.id} wait for build ${b}, which no running server has: start that build to finish them, or \`hvprotect upgrade adopt --server ${sv.id} --from ${b}\` (README: Upgrading)`);
    }
    if (sv.foreignPollers.length) problems.push(`task queue ${sv.taskQueue} is polled by another repository's server too (${sv.foreignPollers.join(', ')}): give one of them another --id`);
  }
  // Agents: every host queue the protected VMs' hosts use, read from the pollers' identities.
  const hosts = new Set<string>();
  const owners = new Map<string, Set<string>>();
  for await (const wf of client.workflow.list({ query: "WorkflowType = 'backupVm' AND BackupHost IS NOT NULL", pageSize: 200 })) {
    const host = wf.typedSearchAttributes.get({ name: 'BackupHost', type: 'KEYWORD' } as never) as string | undefined;
    const server = wf.typedSearchAttributes.get({ name: 'BackupServer', type: 'KEYWORD' } as never) as string | undefined;
    if (!host) continue;
    hosts.add(host);
    if (server && servers.find((s) => s.id === server)?.dataSources.length) owners.set(host, new Set([...(owners.get(host) ?? []), server]));
    if (hosts.size > 200) break;
  }
  const agents: DoctorReport['agents'] = [];
  for (const host of [...hosts].sort()) {
    const ids = (await livePollers(client, namespace, hostTaskQueue(host)).catch(() => [])).map((p) => serversOfAgent(p.identity)).filter((a) => a !== undefined);
    const served = [...new Set(ids.flatMap((a) => a!.servers))].sort();
    if (!ids.length) {
      problems.push(`no agent polls for host ${host} (backups of its VMs wait): start \`hvprotect agent --host ${host}\``);
      continue;
    }
    agents.push({ host, servers: served });
    for (const owner of owners.get(host) ?? []) {
      if (!served.includes(owner)) problems.push(`the agent on ${host} holds no credential for ${owner}, which owns VMs backed up on ${host}: add --server ${owner}=TOKEN_FILE`);
    }
  }
  let selfCheck: DoctorReport['selfCheck'];
  const running = servers.find((s) => s.running);
  if (running) {
    const started = Date.now();
    try {
      await client.workflow.execute('selfCheck', { taskQueue: running.taskQueue, workflowId: `self-check/${new Date().toISOString()}`, workflowExecutionTimeout: `${timeoutSeconds} seconds` });
      selfCheck = { server: running.id, ms: Date.now() - started };
    } catch {
      problems.push(`protection server ${running.id} did not run the self-check within ${timeoutSeconds} s`);
    }
  } else if (servers.length) problems.push('no protection server is running');
  return { servers, agents, problems, selfCheck };
}

/** `npm start`'s key file, which the CLI uses (like its server folder) when nothing else is said. */
function devPayloadKeyFile(): string | undefined {
  const file = path.resolve('.hvprotect/dev/payload.keys');
  return fs.existsSync(file) ? file : undefined;
}

function warnIfPlain(logger: { warn(o: object, msg: string): void }): void {
  if (!process.env.HVPROTECT_PAYLOAD_KEY_FILE) {
    logger.warn({}, 'Temporal payloads are not encrypted (VM names, configs and paths readable in Temporal\'s database): create a key with `hvprotect codec key create FILE` and pass --payload-key-file FILE to the server, agents and CLI');
  }
}

function registerCodecCommands(program: Command): void {
  const codec = program.command('codec').description('Encryption of hvprotect\'s Temporal payloads (AES-256-GCM) so Temporal\'s database holds no VM names, configs or paths');
  const key = codec.command('key').description('Payload key files: several keys with ids; the newest encrypts, every one decrypts');
  key
    .command('create <file>')
    .description('Create a key file (mode 0600) with one new key; refuses to replace an existing file')
    .addHelpText('after', '\nExample:\n  hvprotect codec key create /etc/hvprotect/payload.keys\n  hvprotect server --payload-key-file /etc/hvprotect/payload.keys\n')
    .action((file: string) => {
      const ring = PayloadKeyring.create(file);
      process.stdout.write(`${ring.file}: key ${ring.newest.id}\n`);
      process.stderr.write('give the same file to the server, every agent, the CLI and the codec server; without it Temporal histories cannot be read\n');
    });
  key
    .command('rotate <file>')
    .description('Add a new key that encrypts from now on; older keys stay so existing histories still decrypt')
    .addHelpText('after', '\nCopy the rotated file to every process (server, agents, CLI, codec server) and restart them.\n\nExample:\n  hvprotect codec key rotate /etc/hvprotect/payload.keys\n')
    .action((file: string) => {
      const ring = PayloadKeyring.rotate(file);
      process.stdout.write(`${ring.file}: key ${ring.newest.id} now encrypts; ${ring.keys.length - 1} older key(s) still decrypt\n`);
    });
  key
    .command('list <file>')
    .description('The key ids of a key file, oldest first (the last one encrypts)')
    .action((file: string) => {
      const ring = PayloadKeyring.load(file);
      process.stdout.write(ring.keys.map((k, i) => `${k.id}  ${k.createdAt}${i === ring.keys.length - 1 ? '  (encrypts)' : ''}`).join('\n') + '\n');
    });

  program
    .command('codec-server')
    .description('Serve /encode and /decode for the Temporal Web UI (and `temporal --codec-endpoint`), with the payload key file')
    .option('--host <host>', 'listen address', '127.0.0.1')
    .option('--port <port>', 'listen port', port, 8234)
    .option('--ui-origin <url...>', 'the Web UI origin(s) allowed by CORS, e.g. https://temporal-ui.example.com', ['http://localhost:8233', 'http://127.0.0.1:8233'])
    .option('--auth-token-file <file>', 'require Authorization: Bearer <the token in this file> (the Web UI sends its access token with "pass access token" on)')
    .addHelpText(
      'after',
      '\nThe key file comes from --payload-key-file or $HVPROTECT_PAYLOAD_KEY_FILE. Point the Web UI at it:\n' +
        'TEMPORAL_CODEC_ENDPOINT=https://codec.example.com:8234 (ui-server), or the UI\'s "Data Encoder" setting.\n\nExamples:\n' +
        '  hvprotect codec-server --payload-key-file /etc/hvprotect/payload.keys --ui-origin https://temporal-ui.example.com\n' +
        '  temporal workflow show -w backup/web01/… --codec-endpoint http://127.0.0.1:8234\n',
    )
    .action(async (o) => {
      const logger = createLogger({ name: 'hvprotect-codec-server' });
      const file = process.env.HVPROTECT_PAYLOAD_KEY_FILE;
      if (!file) throw new UsageError('the codec server needs the payload key file: --payload-key-file FILE or HVPROTECT_PAYLOAD_KEY_FILE');
      const token = o.authTokenFile ? readSecretFile(o.authTokenFile, '--auth-token-file') : undefined;
      if (token === '') throw new UsageError(`--auth-token-file ${o.authTokenFile} is empty`);
      const server = await startCodecServer({ codec: AesGcmPayloadCodec.fromFile(file), host: o.host, port: o.port, allowedOrigins: o.uiOrigin,
        authorization: token ? `Bearer ${token}` : undefined, log: (msg, fields) => logger.warn(fields ?? {}, msg) });
      process.stdout.write(`codec server ${server.url} (POST /encode, /decode) for ${(o.uiOrigin as string[]).join(', ')}\n`);
      await untilSignal(() => server.close(), (m) => logger.info(m));
    });
}

export function buildProgram(): Command {
  const program = new Command('hvprotect')
    .description('Hyper-V virtual machine protection; every backup is a durable Temporal workflow.')
    .showHelpAfterError('(run with --help for usage)')
    .option('--payload-key-file <file>', 'encrypt Temporal payloads with the keys of this file (default $HVPROTECT_PAYLOAD_KEY_FILE; `npm start`\'s .hvprotect/dev/payload.keys when it exists)')
    .exitOverride();
  // Every Temporal client and worker reads the key file from the environment (temporal/connection.ts).
  program.hook('preAction', (_program, action) => {
    // npm start's key only for a CLI talking to npm start's Temporal (the default address): never to a cluster or a test's server.
    const devKey = ['dev', 'server', 'agent'].includes(action.name()) || process.env.TEMPORAL_ADDRESS || process.env.TEMPORAL_PROFILE ? undefined : devPayloadKeyFile();
    const file = program.opts().payloadKeyFile ?? process.env.HVPROTECT_PAYLOAD_KEY_FILE ?? devKey;
    if (file) process.env.HVPROTECT_PAYLOAD_KEY_FILE = path.resolve(file);
  });

  program
    .command('dev')
    .description('Run the embedded default: Temporal + Web UI, protection server, a lab cluster with VMs, agents, protection and first backups')
    .option('--state-dir <dir>', 'where state is kept between runs', '.hvprotect/dev')
    .option('--temporal-port <port>', 'Temporal frontend gRPC port', port, 7233)
    .option('--ui-port <port>', 'Temporal Web UI port', port, 8233)
    .option('--api-port <port>', 'storage API port (0 = any free port)', portOrZero, 8780)
    .option('--metrics-port <port>', 'Prometheus /metrics (ours, followed by the Temporal SDK runtime\'s)', port, 9464)
    .option('--sdk-metrics-port <port>', 'where the Temporal SDK runtime\'s own exporter listens (default: metrics port + 1)', port)
    .option('--headless', 'no Web UI', false)
    .option('--bare', 'only Temporal and the protection server (no lab, agents or protections)', false)
    .option('--servers <n>', 'protection servers to run (dpm01, dpm02, …), the sample VMs split between them', positiveInt, 1)
    .option('--no-first-backups', 'protect the sample VMs but do not back them up now')
    .option('--codec-port <port>', 'the codec server the Web UI decrypts payloads with (0 = any free port; default: UI port + 1)', portOrZero)
    .addOption(new Option('--disk-size <MiB>', 'size of each sample disk in MiB (default 128; at least 128 with the guest file systems)').argParser(positiveInt).hideHelp())
    .addHelpText('after', '\nExamples:\n  npm start\n  hvprotect dev --temporal-port 7300 --ui-port 8300 --api-port 8790\n')
    .action(async (o) => {
      const logger = createLogger({ name: 'hvprotect' });
      const stack = await startDevStack({
        stateDir: o.stateDir,
        temporalPort: o.temporalPort,
        uiPort: o.uiPort,
        apiPort: o.apiPort,
        metricsPort: o.metricsPort,
        sdkMetricsPort: o.sdkMetricsPort,
        headless: o.headless,
        bare: o.bare,
        servers: o.servers,
        noFirstBackups: !o.firstBackups,
        codecPort: o.codecPort,
        payloadKeyFile: process.env.HVPROTECT_PAYLOAD_KEY_FILE,
        diskSize: o.diskSize ? o.diskSize * 1024 * 1024 : undefined,
        logger,
      });
      const ui = stack.temporal.uiUrl ? `${stack.temporal.uiUrl}/namespaces/${stack.temporal.namespace}/workflows` : '(headless)';
      const env = `TEMPORAL_ADDRESS=${stack.temporal.address} HVPROTECT_SERVER_DIR=${stack.server.stateDir} HVPROTECT_PAYLOAD_KEY_FILE=${stack.payloadKeyFile}`;
      const lines = [
        '',
        'hvprotect is running (Ctrl-C stops everything; a second start resumes from the same state).',
        `  Web UI:        ${ui}`,
        `  Temporal:      ${stack.temporal.address} (namespace ${stack.temporal.namespace})`,
        `  Payloads:      encrypted with ${stack.payloadKeyFile}; the Web UI decrypts through the codec server ${stack.codecServer.url}`,
        ...stack.servers.map((sv) => `  Server ${sv.id}:  storage API ${sv.storageApi.url}, repository ${sv.repository.root} (admin token in ${path.join(sv.stateDir, 'admin.token')})`),
        ...stack.servers.map((sv) => `  Protection:    ${sv.storageApi.url}/protection (${sv.id}; sign in with its admin token)`),
        `  Metrics:       ${stack.server.metricsUrl}`,
        stack.lab ? `  Lab:           ${stack.lab.root} (agents: ${stack.agents.map((a) => a.host).join(', ')})` : '',
        stack.protections.length ? `  Protected:     ${stack.protections.map((p) => `${p.vm}${p.dataSource !== p.vm ? ` (${p.dataSource})` : ''}`).join(', ')}` : '',
        stack.firstBackups.length ? `  First backups: ${stack.firstBackups.length} started; watch them in the Web UI or with \`status\`` : '',
        '',
        'Try, in another terminal:',
        `  export ${env}`,
        '  node dist/client/cli.js status',
        '  node dist/client/cli.js protect list',
        '  node dist/client/cli.js backup web01 --wait',
        '  node dist/client/cli.js rp list web01',
        '  node dist/client/cli.js restore web01 --host hv01 --to /tmp/restore --format raw',
        '  node dist/client/cli.js shadowstorage list',
        '  node dist/client/cli.js lab --lab ' + (stack.lab?.root ?? '.hvprotect/dev/lab') + ' vm list',
        '',
      ].filter((l, i, all) => l !== '' || (i > 0 && all[i - 1] !== ''));
      process.stdout.write(`${lines.join('\n')}\n`);
      await untilSignal(() => stack.stop(), (m) => logger.info(m));
    });

  program
    .command('server')
    .description('Run a protection server: repository, storage API, the workflows of the data sources it owns and its activities (task queue hvprotect-server-<id>)')
    .option('--id <id>', 'this server\'s id, e.g. dpm01 (default: as recorded in its repository, else derived from the repository)')
    .option('--state-dir <dir>', 'repository, agent tokens and admin token', '.hvprotect/server')
    .option('--repository <dir>', 'repository folder (default <state-dir>/repository)')
    .option('--api-host <host>', 'storage API listen address', '127.0.0.1')
    .option('--api-port <port>', 'storage API port (0 = any free port)', portOrZero, 8780)
    .option('--metrics-port <port>', 'Prometheus /metrics (ours, followed by the Temporal SDK runtime\'s)', port, 9464)
    .option('--sdk-metrics-port <port>', 'where the Temporal SDK runtime\'s own exporter listens (default: metrics port + 1)', port)
    .option('--metrics-host <host>', '/metrics listen address (e.g. a management network\'s)', '127.0.0.1')
    .option('--metrics-token-file <file>', '/metrics answers only Authorization: Bearer <the token in this file>')
    .option('--max-disk-size <size>', 'largest disk an agent may send (bytes or 2TB, 512GB; default 64TB)', diskSize)
    .option('--max-points-per-hour <n>', 'recovery points a data source may gain in any hour; more are refused (TooManyPoints)', pointsPerHour, 12)
    .option('--api-tls-cert <file>', 'serve the storage API over HTTPS with this certificate (PEM, chain allowed)')
    .option('--api-tls-key <file>', 'the key of --api-tls-cert (PEM)')
    .option('--api-tls-client-ca <file>', 'mutual TLS: agents must present a certificate signed by this CA (PEM)')
    .option('--encryption-key-file <file>', 'encrypt chunks at rest (AES-256-GCM) with this key (from `hvprotect key generate`); an encrypted repository needs it')
    .option('--alert-webhook <url>', 'POST every change of a protection\'s status (OK / WARNING / CRITICAL) here as JSON, signed (X-Hvprotect-Signature, HMAC-SHA256)')
    .option('--alert-webhook-secret-file <file>', 'the secret the alerts are signed with (required with --alert-webhook)')
    .option('--build-id <id>', 'this build\'s id in the server\'s worker deployment (default: package version and a digest of the workflow code); see `hvprotect upgrade`')
    .addHelpText(
      'after',
      '\nConnection: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE.\n' +
        'The admin token is written to <state-dir>/admin.token (mode 0600).\n\nExamples:\n' +
        '  hvprotect server\n  TEMPORAL_ADDRESS=temporal.example.com:7233 hvprotect server --api-host 0.0.0.0 --state-dir /srv/hvprotect\n' +
        '  hvprotect key generate > /srv/hvprotect.key && hvprotect server --encryption-key-file /srv/hvprotect.key \\\n' +
        '    --api-host 0.0.0.0 --api-tls-cert server.crt --api-tls-key server.key --api-tls-client-ca agents-ca.crt\n',
    )
    .action(async (o) => {
      const logger = createLogger({ name: 'hvprotect-server' });
      warnIfPlain(logger);
      const metricsToken = o.metricsTokenFile ? readSecretFile(o.metricsTokenFile, '--metrics-token-file') : undefined;
      if (metricsToken === '') throw new UsageError(`--metrics-token-file ${o.metricsTokenFile} is empty`);
      const sdk = `127.0.0.1:${o.sdkMetricsPort ?? o.metricsPort + 1}`;
      let apiTls;
      try {
        apiTls = loadServerTls({ certFile: o.apiTlsCert, keyFile: o.apiTlsKey, clientCaFile: o.apiTlsClientCa });
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      const encryptionKey = o.encryptionKeyFile ? await EncryptionKey.load(o.encryptionKeyFile) : undefined;
      if (!!o.alertWebhook !== !!o.alertWebhookSecretFile) throw new UsageError('--alert-webhook and --alert-webhook-secret-file go together: the receiver checks each alert\'s signature with the secret');
      if (o.alertWebhook && !/^https?:\/\//.test(o.alertWebhook)) throw new UsageError(`--alert-webhook ${o.alertWebhook}: an http:// or https:// URL`);
      const alertWebhook = o.alertWebhook ? { url: o.alertWebhook as string, secret: readSecretFile(o.alertWebhookSecretFile, '--alert-webhook-secret-file') } : undefined;
      installRuntime({ logger, prometheusBindAddress: sdk });
      const server = await startServer({
        id: o.id,
        apiTls,
        encryptionKey,
        logger,
        stateDir: o.stateDir,
        repositoryDir: o.repository,
        apiHost: o.apiHost,
        apiPort: o.apiPort,
        metricsPort: o.metricsPort,
        metricsHost: o.metricsHost,
        maxDiskSize: o.maxDiskSize,
        maxPointsPerHour: o.maxPointsPerHour,
        metricsToken,
        sdkMetricsUrl: `http://${sdk}/metrics`,
        buildId: o.buildId,
        alertWebhook,
      });
      process.stdout.write(`protection server ${server.id} (build ${server.buildId}) on task queue ${server.taskQueue}\nstorage API ${server.storageApi.url}\nmetrics ${server.metricsUrl}\n`);
      await Promise.race([server.done, untilSignal(() => server.shutdown(), (m) => logger.info(m))]);
    });

  program
    .command('agent')
    .description('Run the protection agent of one Hyper-V host: host activities on hvprotect-host-NAME')
    .requiredOption('--host <name>', 'this host\'s name (as the cluster and hvprotect know it)')
    .option('--hypervisor <kind>', 'lab | hyperv', hypervisorKind, 'lab')
    .option('--lab-root <dir>', 'the lab folder (for --hypervisor lab)', '.hvprotect/dev/lab')
    .option('--powershell <path>', 'PowerShell to run (for --hypervisor hyperv; default pwsh or powershell.exe on PATH)')
    .option('--hyperv-state-dir <dir>', 'RCT store and checkpoint records (for --hypervisor hyperv; default %ProgramData%\\hvprotect\\hyperv-rct; a CSV folder on a cluster)')
    .addOption(new Option('--guest-backup-type <type>', 'GuestBackupType of online checkpoints: copy leaves guest application logs alone, full lets them truncate').choices(['copy', 'full']).default('copy'))
    .addOption(new Option('--app-consistent-fallback <what>', 'when the guest cannot quiesce: a crash-consistent checkpoint of the running VM, or fail').choices(['crash-consistent', 'fail']).default('crash-consistent'))
    .option('--server <id=token-file>', 'a protection server this agent serves and the file with its token for it (repeat for each server)', collectServer, [])
    .option('--server-url <id=url>', 'where that server\'s storage API is (default: the address the server sends with each job)', collectServerUrl, {})
    .option('--storage-ca <file>', 'CA bundle (PEM) that signs the storage API\'s certificate, for https:// (default $HVPROTECT_STORAGE_CA)')
    .option('--storage-cert <file>', 'this agent\'s client certificate (PEM), when the server requires one (--api-tls-client-ca)')
    .option('--storage-key <file>', 'the key of --storage-cert (PEM)')
    .option('--max-transfers <n>', 'disk transfers at once on this host (DPM default 3)', positiveInt, 3)
    .option('--throttle <MBps>', 'read bandwidth limit per disk transfer, MB/s', positiveInt)
    .option('--restore-root <dir...>', 'folders restores may write under (repeatable; default $HVPROTECT_RESTORE_ROOTS, else the temp folder)')
    .addOption(new Option('--batch-slots <n>', 'chunks per transfer batch (tests)').argParser(positiveInt).hideHelp())
    .addOption(new Option('--progress-ms <n>', 'how often transfer progress (heartbeats) reaches Temporal, ms (tests)').argParser(positiveInt).hideHelp())
    .addHelpText(
      'after',
      '\nEach token comes from `hvprotect token issue --host NAME` against that server. A job from a server\n' +
        'the agent holds no token for is refused.\n\nExamples:\n' +
        '  hvprotect agent --host hv01 --hypervisor hyperv --server dpm01=/etc/hvprotect/dpm01.token --server dpm02=/etc/hvprotect/dpm02.token\n' +
        '  hvprotect agent --host hv01 --hypervisor hyperv --server dpm01=dpm01.token --server-url dpm01=https://dpm01:8780 --storage-ca ca.crt --storage-cert hv01.crt --storage-key hv01.key\n' +
        '  hvprotect agent --host lab1 --lab-root .hvprotect/dev/lab --server dpm01=.hvprotect/dev/agents/lab1.token\n',
    )
    .action(async (o) => {
      const logger = createLogger({ name: 'hvprotect-agent' });
      warnIfPlain(logger);
      const pairs = o.server as { id: string; file: string }[];
      if (!pairs.length) throw new UsageError('the agent serves the servers it holds a token for: --server ID=TOKEN_FILE (from `hvprotect token issue --host NAME` against that server)');
      const urls = o.serverUrl as Record<string, string>;
      for (const id of Object.keys(urls)) if (!pairs.some((p) => p.id === id)) throw new UsageError(`--server-url ${id}=…: no --server ${id}=TOKEN_FILE`);
      const servers = pairs.map((p) => ({ id: p.id, token: readSecretFile(p.file, `--server ${p.id}=`), storageUrl: urls[p.id] }));
      let storageTls;
      try {
        storageTls = loadClientTls({ caFile: o.storageCa ?? (process.env.HVPROTECT_STORAGE_CA || undefined), certFile: o.storageCert, keyFile: o.storageKey });
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      const adapter =
        o.hypervisor === 'lab'
          ? await LabHypervisor.open(o.labRoot, o.host)
          : new HyperVHypervisor({
              hostName: o.host,
              powershell: o.powershell,
              stateDir: o.hypervStateDir,
              guestBackupType: o.guestBackupType,
              applicationConsistentFallback: o.appConsistentFallback,
            });
      const agent = await startAgent({ logger, adapter, servers, storageTls, maxConcurrentTransfers: o.maxTransfers, batchSlots: o.batchSlots,
        throttleBytesPerSecond: o.throttle ? o.throttle * 1_000_000 : undefined, progressIntervalMs: o.progressMs, restoreRoots: configuredRestoreRoots(o.restoreRoot) });
      await Promise.race([agent.done, untilSignal(() => agent.shutdown(), (m) => logger.info(m))]);
    });

  program
    .command('doctor')
    .description('Check the installation: Temporal answers, every protection server (and what it owns) and every agent (the servers it serves), and what is wrong')
    .option('--timeout <seconds>', 'how long to wait for a protection server to run the self-check', positiveInt, 30)
    .option('--json', 'print the result as JSON', false)
    .addHelpText('after', '\nExit code 1 when something is wrong.\n\nExample:\n  hvprotect doctor --timeout 10\n')
    .action(async (o) => {
      const settings = loadTemporalSettings();
      const client = await connectClient(settings);
      try {
        const report = await doctor(client, settings.namespace, o.timeout);
        if (o.json) process.stdout.write(`${JSON.stringify(report)}\n`);
        else {
          const lines = [`Temporal at ${settings.address} (namespace ${settings.namespace})`, 'servers:'];
          for (const sv of report.servers) lines.push(`  ${sv.id}  ${sv.running ? 'running' : 'NOT RUNNING'}  build ${sv.buildId ?? '-'}  queue ${sv.taskQueue}  repository ${sv.repository}  storage ${sv.storageUrl}  owns ${sv.dataSources.length}${sv.dataSources.length ? ` (${sv.dataSources.join(', ')})` : ''}`);
          lines.push('agents:');
          for (const a of report.agents) lines.push(`  ${a.host}  serves ${a.servers.join(', ') || 'none'}`);
          lines.push(report.problems.length ? `problems:\n${report.problems.map((p) => `  - ${p}`).join('\n')}` : `ok: self-check answered by ${report.selfCheck?.server} in ${report.selfCheck?.ms} ms`);
          process.stdout.write(`${lines.join('\n')}\n`);
        }
        if (report.problems.length) process.exitCode = 1;
      } finally {
        await client.connection.close();
      }
    });

  const upgrade = program
    .command('upgrade')
    .description('Upgrade a protection server in place without breaking its running jobs (README: Upgrading): drain, stop, start the new build')
    .addHelpText(
      'after',
      '\nEach server is a Temporal worker deployment (hvprotect-server-<id>); a backup or restore stays pinned to the build that started it.\n\n' +
        'Example, one server:\n  hvprotect upgrade drain --server dpm01 --wait 2h   # new work waits; running jobs finish\n' +
        '  (stop the server, install the new release, start it: it becomes current and runs what waited)\n  hvprotect upgrade status --server dpm01\n',
    );
  const withClient = async (fn: (client: Client) => Promise<void>) => {
    const client = await connectClient(loadTemporalSettings());
    try {
      await fn(client);
    } finally {
      await client.connection.close();
    }
  };
  const cliIdentity = `hvprotect-cli@${os.hostname()}`;
  upgrade
    .command('status')
    .description('Builds of a server in Temporal, which one takes new work, and the open jobs pinned to each')
    .option('--server <id>', 'the server (default: the only one)')
    .option('--json', 'print as JSON', false)
    .action(async (o) =>
      withClient(async (client) => {
        const st = await upgradeStatus(client, await pickServer(client, o.server));
        if (o.json) return void process.stdout.write(`${JSON.stringify(st)}\n`);
        const lines = [
          `server ${st.server}: ${st.running ? `running build ${st.runningBuild ?? '(before versioning)'}` : 'not running'}; ` +
            (st.drained ? 'DRAINED: new work waits until a build of it starts' : `new work goes to build ${st.currentBuild ?? '(none yet)'}`),
          'builds:',
          ...st.versions.map((v) => `  ${v.buildId}  ${v.status}  since ${v.createdAt ?? '?'}  open pinned jobs ${st.pinned[v.buildId]?.length ?? 0}`),
        ];
        for (const [b, runs] of Object.entries(st.pinned)) if (b !== st.currentBuild) for (const r of runs) lines.push(`  waiting for ${b}: ${r.workflowId}`);
        process.stdout.write(`${lines.join('\n')}\n`);
      }),
    );
  upgrade
    .command('drain')
    .description('Stop a server taking new work (scheduled and manual jobs wait in Temporal) and let its running jobs finish')
    .option('--server <id>', 'the server (default: the only one)')
    .option('--wait <duration>', 'wait until its running jobs have finished, at most this long (e.g. 90s, 30m, 2h)', durationMs)
    .action(async (o) =>
      withClient(async (client) => {
        const server = await pickServer(client, o.server);
        const r = await drainServer(client, server, {
          waitMs: o.wait,
          identity: cliIdentity,
          onWait: (open) => process.stderr.write(`waiting for ${open.length} job(s): ${open.map((x) => x.workflowId).join(', ')}\n`),
        });
        if (!r.open.length) {
          process.stdout.write(`${server.id} is drained (build ${r.build || '?'} runs no job): stop it, install the new release and start it; it takes the waiting work\n`);
        } else {
          process.stdout.write(
            `${server.id} takes no new work; ${r.open.length} job(s) of build ${r.build} still run: ${r.open.map((x) => x.workflowId).join(', ')}\n` +
              'wait for them (`hvprotect upgrade drain --wait 1h` again, or `hvprotect upgrade status`) before stopping it\n',
          );
          process.exitCode = 3;
        }
      }),
    );
  upgrade
    .command('resume')
    .description('End a drain: the build given (default the running one) takes new work again')
    .option('--server <id>', 'the server (default: the only one)')
    .option('--build <id>', 'the build to make current')
    .action(async (o) =>
      withClient(async (client) => {
        const server = await pickServer(client, o.server);
        const build = await resumeServer(client, server, cliIdentity, o.build);
        process.stdout.write(`${server.id}: build ${build} takes new work\n`);
      }),
    );
  upgrade
    .command('adopt')
    .description('Continue the open jobs pinned to an old build on the current one (only when this release replays that build\'s histories; else start the old build to finish them)')
    .option('--server <id>', 'the server (default: the only one)')
    .requiredOption('--from <build>', 'the old build whose jobs wait')
    .action(async (o) =>
      withClient(async (client) => {
        const server = await pickServer(client, o.server);
        const r = await adoptRuns(client, server, o.from, cliIdentity);
        process.stdout.write(`${r.moved.length} job(s) of build ${o.from} continue on build ${r.to}${r.moved.length ? `: ${r.moved.map((x) => x.workflowId).join(', ')}` : ''}\n`);
      }),
    );

  const key = program.command('key').description('Encryption keys for chunks at rest (AES-256-GCM): keep the key file safe, a repository cannot be read without it');
  key
    .command('generate')
    .description('Print a new random key file to stdout')
    .addHelpText('after', '\nExample:\n  (umask 077; hvprotect key generate > /srv/hvprotect.key)\n  hvprotect server --encryption-key-file /srv/hvprotect.key\n')
    .action(() => {
      const { key: k, file } = EncryptionKey.generate();
      process.stdout.write(file);
      process.stderr.write(`key ${k.fingerprint.slice(0, 16)}…: keep a copy of this file apart from the repository; without it the backups cannot be read\n`);
    });
  key
    .command('fingerprint <file>')
    .description('Print the fingerprint of a key file (what the repository config records)')
    .action(async (file: string) => {
      process.stdout.write(`${(await EncryptionKey.load(file)).fingerprint}\n`);
    });

  registerCodecCommands(program);
  registerCommands(program);
  program.addCommand(labCommand());
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    // Done: do not wait for lingering handles (the Temporal runtime, keep-alive sockets), but let
    // stdout drain first: into a pipe it is asynchronous, and exit would cut a long listing short.
    await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
    process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') process.exit(0);
      process.exit(EXIT_USAGE);
    }
    reportAndExit(err);
  }
}

if (require.main === module) {
  void main(process.argv);
}
