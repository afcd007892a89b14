// A whole hvprotect stack for a test file: a protection server (repository + storage API +
// workflows) and lab host agents, on the run's real Temporal dev server, in this jest worker's
// own namespace. Agents run in-process unless a test spawns them as processes to kill them.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { openDiskStream } from '../../recovery';
import type { BackupVmInput } from '../../workflows/backup-vm';
import { readBackupProgress } from '../../client/backup-progress';
import { readWorkflowRun, type ActivityRun } from '../load/history';
import { createLogger } from '../../log/logger';
import { loadTemporalSettings, type TemporalSettings } from '../../temporal/connection';
import { PayloadKeyring } from '../../temporal/payload-codec';
import { startServer, type RunningServer } from '../../workers/server';
import { startAgent, type RunningAgent } from '../../workers/agent';
import { Lab, LabHypervisor } from '../../hypervisor/lab';
import type { HypervisorAdapter } from '../../hypervisor/types';

export interface TestStack {
  dir: string;
  lab: Lab;
  /** The first protection server. */
  server: RunningServer;
  /** Every protection server (each agent holds a credential for all of them). */
  servers: RunningServer[];
  agents: Map<string, RunningAgent>;
  client: Client;
  temporal: TemporalSettings;
  startAgent(host: string): Promise<RunningAgent>;
  /** The agent as its own process (`hvprotect agent`), to kill -9. */
  spawnAgent(host: string, extraArgs?: string[]): Promise<ChildProcess>;
  stopAgent(host: string): Promise<void>;
  agentToken(host: string): Promise<string>;
  stop(): Promise<void>;
}

export function testNamespace(): string {
  return `hvp-test-${process.env.JEST_WORKER_ID ?? '1'}`;
}

export interface TestStackOptions {
  hosts: string[];
  cluster?: { name: string; nodes: string[] };
  batchSlots?: number;
  /** Hosts that get an in-process agent (default all). */
  agents?: string[];
  throttleBytesPerSecond?: number;
  /** Transfers at once per host (the agent's default is 3). */
  maxConcurrentTransfers?: number;
  temporal?: TemporalSettings;
  repositoryDir?: string;
  /** SMB file servers (lab hosts with shares), each with an agent. */
  fileServers?: string[];
  /** Protection server ids (default one server, its id derived from its repository). */
  servers?: string[];
  /** Session TTL and keeper interval of the servers (tests of long backups shorten them). */
  sessions?: { ttlMs?: number; keepIntervalMs?: number };
  /** The servers' build id in their worker deployment (default: from the workflow bundle). */
  buildId?: string;
  /** The servers' alert webhook and how often their status gauges re-read the protections. */
  alertWebhook?: { url: string; secret: string };
  protectionStatesIntervalMs?: number;
  /** Wraps each in-process agent's lab adapter (tests that slow, count or order its calls). */
  wrapAdapter?: (host: string, adapter: HypervisorAdapter) => HypervisorAdapter;
}

export async function startTestStack(opts: TestStackOptions): Promise<TestStack> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-stack-'));
  const logger = createLogger({ name: 'test', level: process.env.HVP_TEST_LOG_LEVEL ?? 'warn', format: 'json', destination: path.join(dir, 'log.jsonl') });
  // HVP_TEST_PAYLOAD_CODEC=1 runs the stack (and the CLI processes a test spawns) with a payload key.
  const payloadKeyFile = !opts.temporal && process.env.HVP_TEST_PAYLOAD_CODEC ? PayloadKeyring.create(path.join(dir, 'payload.keys')).file : undefined;
  if (payloadKeyFile) process.env.HVPROTECT_PAYLOAD_KEY_FILE = payloadKeyFile;
  const temporal = opts.temporal ?? loadTemporalSettings({ TEMPORAL_ADDRESS: process.env.TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE: testNamespace(), HVPROTECT_PAYLOAD_KEY_FILE: payloadKeyFile });
  const lab = await Lab.open(path.join(dir, 'lab'));
  for (const h of opts.hosts) await lab.createHost(h);
  for (const h of opts.fileServers ?? []) await lab.createHost(h, { fileServer: true });
  if (opts.cluster) await lab.createCluster(opts.cluster.name, opts.cluster.nodes);
  const servers: RunningServer[] = [];
  for (const [i, id] of (opts.servers ?? [undefined]).entries()) {
    servers.push(
      await startServer({ id, logger, temporal, stateDir: path.join(dir, i === 0 ? 'server' : `server-${id}`), repositoryDir: i === 0 ? opts.repositoryDir : undefined, apiPort: 0, metricsPort: 0, registerSearchAttributes: false, sessionTtlMs: opts.sessions?.ttlMs, sessionKeepIntervalMs: opts.sessions?.keepIntervalMs, buildId: opts.buildId, alertWebhook: opts.alertWebhook, protectionStatesIntervalMs: opts.protectionStatesIntervalMs, webUiUrl: process.env.HVP_TEST_TEMPORAL_UI || undefined }),
    );
  }
  const server = servers[0];
  const agents = new Map<string, RunningAgent>();
  const tokens = new Map<string, string>();
  const children: ChildProcess[] = [];
  const tokenFor = async (sv: RunningServer, host: string) => {
    const key = `${sv.id} ${host}`;
    if (!tokens.has(key)) tokens.set(key, await sv.tokens.issue(host, 'agent'));
    return tokens.get(key)!;
  };
  const agentToken = (host: string) => tokenFor(server, host);
  const credentials = async (host: string) => Promise.all(servers.map(async (sv) => ({ id: sv.id, token: await tokenFor(sv, host) })));
  const stack: TestStack = {
    dir,
    lab,
    server,
    servers,
    agents,
    client: server.client,
    temporal,
    agentToken,
    async startAgent(host) {
      const agent = await startAgent({
        logger: logger.child({ host }),
        adapter: await (async () => {
          const adapter = await LabHypervisor.open(lab, host);
          return opts.wrapAdapter ? opts.wrapAdapter(host, adapter) : adapter;
        })(),
        servers: await credentials(host),
        temporal,
        batchSlots: opts.batchSlots,
        throttleBytesPerSecond: opts.throttleBytesPerSecond,
        maxConcurrentTransfers: opts.maxConcurrentTransfers,
        progressIntervalMs: 100,
      });
      agents.set(host, agent);
      return agent;
    },
    async spawnAgent(host, extraArgs = []) {
      const serverArgs: string[] = [];
      for (const c of await credentials(host)) {
        const tokenFile = path.join(dir, `${host}-${c.id}.token`);
        fs.writeFileSync(tokenFile, c.token, { mode: 0o600 });
        serverArgs.push('--server', `${c.id}=${tokenFile}`);
      }
      const cli = path.resolve(__dirname, '..', '..', 'dist', 'client', 'cli.js');
      const child = spawn(
        process.execPath,
        [cli, 'agent', '--host', host, '--lab-root', lab.root, ...serverArgs, '--progress-ms', '100', ...extraArgs],
        {
          env: { ...process.env, TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: temporal.namespace, HVPROTECT_LOG_FORMAT: 'json', HVPROTECT_PAYLOAD_KEY_FILE: temporal.payloadKeyFile ?? '' },
          stdio: ['ignore', fs.openSync(path.join(dir, `agent-${host}.log`), 'a'), fs.openSync(path.join(dir, `agent-${host}.log`), 'a')],
        },
      );
      children.push(child);
      return child;
    },
    async stopAgent(host) {
      await agents.get(host)?.shutdown();
      agents.delete(host);
    },
    async stop() {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      for (const a of agents.values()) await a.shutdown().catch(() => undefined);
      for (const sv of servers) await sv.shutdown().catch(() => undefined);
      if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  for (const h of [...(opts.agents ?? opts.hosts), ...(opts.fileServers ?? [])]) {
    await agentToken(h);
    await stack.startAgent(h);
  }
  return stack;
}

/** The bytes of a disk of a recovery point, read through the repository's restore reader. */
export async function restoredBytes(stack: TestStack, ds: string, pointId: string, diskId: string): Promise<Buffer> {
  const { stream } = await openDiskStream(stack.server.repository, ds, pointId, diskId);
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Starts backupVm with a readable id and short test timings (overridable per call). */
export function startBackup(stack: TestStack, input: BackupVmInput, timing: BackupVmInput['timing'] = {}): Promise<WorkflowHandle> {
  return stack.client.workflow.start('backupVm', {
    taskQueue: stack.server.taskQueue,
    workflowId: `backup/${input.dataSource}/${new Date().toISOString()}-${randomUUID().slice(0, 4)}`,
    args: [{ ...input, timing: { ...timing, ...input.timing } }],
  });
}

/** Waits until a backup is transferring and has read at least `minBytes`. */
export async function waitForTransfer(handle: WorkflowHandle, minBytes: number): Promise<void> {
  for (const deadline = Date.now() + 60_000; ; ) {
    const p = await readBackupProgress(handle);
    if (p.bytesRead >= minBytes && p.disks.some((d) => !d.done)) return;
    if (Date.now() > deadline) throw new Error(`transfer did not start: ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A failure's cause chain: every message with its failure type, and the types alone. */
export interface FailureChain {
  /** "message [Type] <- message [Type] …" from the outermost error in. */
  text: string;
  types: string[];
}

export function failureChain(err: unknown): FailureChain {
  const parts: string[] = [];
  const types: string[] = [];
  for (let e = err as { message?: string; type?: string; cause?: unknown } | undefined, i = 0; e && i < 8; e = e.cause as typeof e, i++) {
    parts.push(`${e.message} [${e.type ?? ''}]`);
    if (e.type) types.push(e.type);
  }
  return { text: parts.join(' <- '), types };
}

/** The failure a workflow (or any promise) ends with; a success fails the test. */
export async function failureOf(result: Promise<unknown>): Promise<FailureChain> {
  try {
    await result;
  } catch (err) {
    return failureChain(err);
  }
  throw new Error('expected a failure, it succeeded');
}

/** A backup's locate probes from its history: each probe's host queue and how it ended, whether
 *  the first probe was scheduled before the agent list (listHosts) had answered, and how many
 *  times the agent list was asked for. */
export async function locateProbes(client: Client, handle: WorkflowHandle): Promise<{ probedBeforeListed: boolean; listings: number; probes: Array<{ queue: string; ended: ActivityRun['outcome'] }> }> {
  const { activities } = await readWorkflowRun(client, handle.workflowId);
  const listings = activities.filter((a) => a.activityType === 'listHosts');
  const listedAt = Math.min(Infinity, ...listings.filter((a) => a.outcome === 'completed').map((a) => a.closedEventId!));
  const probes = activities.filter((a) => a.activityType === 'locateVm');
  return {
    probedBeforeListed: probes.length > 0 && probes[0].scheduledEventId < listedAt,
    listings: listings.length,
    probes: probes.map((a) => ({ queue: a.taskQueue, ended: a.outcome })),
  };
}
