// A whole hvprotect stack for a test file: a protection server (repository + storage API +
// workflows) and lab host agents, on the run's real Temporal dev server, in this jest worker's
// own namespace. Agents run in-process unless a test spawns them as processes to kill them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { createLogger } from '../../log/logger';
import { loadTemporalSettings, type TemporalSettings } from '../../temporal/connection';
import { startServer, type RunningServer } from '../../workers/server';
import { startAgent, type RunningAgent } from '../../workers/agent';
import { Lab, LabHypervisor } from '../../hypervisor/lab';

export interface TestStack {
  dir: string;
  lab: Lab;
  server: RunningServer;
  agents: Map<string, RunningAgent>;
  client: Client;
  temporal: TemporalSettings;
  startAgent(host: string): Promise<RunningAgent>;
  stopAgent(host: string): Promise<void>;
  agentToken(host: string): Promise<string>;
  stop(): Promise<void>;
}

export function testNamespace(): string {
  return `hvp-test-${process.env.JEST_WORKER_ID ?? '1'}`;
}

export async function startTestStack(opts: { hosts: string[]; cluster?: { name: string; nodes: string[] }; batchSlots?: number; agents?: string[] }): Promise<TestStack> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-stack-'));
  const logger = createLogger({ name: 'test', level: process.env.HVP_TEST_LOG_LEVEL ?? 'warn', format: 'json', destination: path.join(dir, 'log.jsonl') });
  const temporal = loadTemporalSettings({ TEMPORAL_ADDRESS: process.env.TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE: testNamespace() });
  const lab = await Lab.open(path.join(dir, 'lab'));
  for (const h of opts.hosts) await lab.createHost(h);
  if (opts.cluster) await lab.createCluster(opts.cluster.name, opts.cluster.nodes);
  const server = await startServer({ logger, temporal, stateDir: path.join(dir, 'server'), apiPort: 0, registerSearchAttributes: false });
  const agents = new Map<string, RunningAgent>();
  const tokens = new Map<string, string>();
  const agentToken = async (host: string) => {
    if (!tokens.has(host)) tokens.set(host, await server.tokens.issue(host, 'agent'));
    return tokens.get(host)!;
  };
  const stack: TestStack = {
    dir,
    lab,
    server,
    agents,
    client: server.client,
    temporal,
    agentToken,
    async startAgent(host) {
      const agent = await startAgent({
        logger: logger.child({ host }),
        adapter: await LabHypervisor.open(lab, host),
        storageUrl: server.storageApi.url,
        token: await agentToken(host),
        temporal,
        batchSlots: opts.batchSlots,
      });
      agents.set(host, agent);
      return agent;
    },
    async stopAgent(host) {
      await agents.get(host)?.shutdown();
      agents.delete(host);
    },
    async stop() {
      for (const a of agents.values()) await a.shutdown().catch(() => undefined);
      await server.shutdown().catch(() => undefined);
      if (!process.env.HVP_KEEP_TEST_STATE) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  for (const h of opts.agents ?? opts.hosts) {
    await agentToken(h);
    await stack.startAgent(h);
  }
  return stack;
}
