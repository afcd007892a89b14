// `hvprotect upgrade`: the steps of upgrading a protection server in place (README: Upgrading),
// over Temporal's worker deployment of that server (temporal/versioning.ts).
import type { Client } from '@temporalio/client';
import { UsageError } from './errors';
import { listServers, type ServerStatus } from './protection';
import {
  describeServerDeployment,
  openPinnedRuns,
  repinRun,
  setCurrentBuild,
  type DeploymentState,
  type PinnedRun,
} from '../temporal/versioning';

export interface ServerUpgradeStatus {
  server: string;
  running: boolean;
  /** The build its running process reports (absent for builds before versioning). */
  runningBuild?: string;
  /** Where new work goes; absent while drained. */
  currentBuild?: string;
  drained: boolean;
  versions: DeploymentState['versions'];
  /** Open jobs pinned to each build. */
  pinned: Record<string, PinnedRun[]>;
}

/** The one server asked for, or the only one there is. */
export async function pickServer(client: Client, requested?: string): Promise<ServerStatus> {
  let servers = await listServers(client);
  // Visibility can lag a server that has just (re)started: give its record a few seconds.
  for (let i = 0; requested && i < 10 && !servers.some((x) => x.id === requested); i++) {
    await new Promise((r) => setTimeout(r, 500));
    servers = await listServers(client);
  }
  if (requested) {
    const s = servers.find((x) => x.id === requested);
    if (!s) throw new UsageError(`no protection server ${requested}${servers.length ? `; servers: ${servers.map((x) => x.id).join(', ')}` : ''}`);
    return s;
  }
  if (servers.length === 1) return servers[0];
  throw new UsageError(servers.length ? `name the server with --server (${servers.map((x) => x.id).join(', ')})` : 'no protection server has started in this namespace');
}

export async function upgradeStatus(client: Client, server: ServerStatus): Promise<ServerUpgradeStatus> {
  const d = await describeServerDeployment(client, client.options.namespace, server.id);
  const pinned: Record<string, PinnedRun[]> = {};
  for (const r of await openPinnedRuns(client, server.id)) (pinned[r.buildId] ??= []).push(r);
  return {
    server: server.id,
    running: server.running,
    runningBuild: server.buildId,
    currentBuild: d?.currentBuildId,
    drained: !!d && d.versions.length > 0 && !d.currentBuildId,
    versions: d?.versions ?? [],
    pinned,
  };
}

export interface DrainResult {
  server: string;
  /** The build that was current, whose jobs were waited for. */
  build: string;
  /** Its jobs still open when the wait ended (empty: safe to stop the server). */
  open: PinnedRun[];
}

/**
 * Takes away the server's current build: new work waits in Temporal from now on. With `waitMs`,
 * waits until no job pinned to the build that was current is open (or the time is up).
 */
export async function drainServer(client: Client, server: ServerStatus, o: { waitMs?: number; identity: string; onWait?: (open: PinnedRun[]) => void }): Promise<DrainResult> {
  const before = await describeServerDeployment(client, client.options.namespace, server.id);
  if (!before?.versions.length) throw new UsageError(`protection server ${server.id} has no versioned build in Temporal yet (started before versioning?): start it with this release first`);
  const previous = before.currentBuildId ? await setCurrentBuild(client, client.options.namespace, server.id, '', o.identity) : '';
  const build = previous || server.buildId || '';
  if (!build) return { server: server.id, build: '', open: [] };
  const deadline = Date.now() + (o.waitMs ?? 0);
  for (;;) {
    const open = await openPinnedRuns(client, server.id, build);
    if (!open.length || Date.now() >= deadline) return { server: server.id, build, open };
    o.onWait?.(open);
    await new Promise((r) => setTimeout(r, 2_000));
  }
}

/** Ends a drain: the given build (default the running process's) takes new work again. */
export async function resumeServer(client: Client, server: ServerStatus, identity: string, buildId?: string): Promise<string> {
  const build = buildId ?? server.buildId;
  if (!build) throw new UsageError(`name the build to resume with --build (\`hvprotect upgrade status --server ${server.id}\` lists them)`);
  const d = await describeServerDeployment(client, client.options.namespace, server.id);
  if (!d?.versions.some((v) => v.buildId === build)) {
    throw new UsageError(`build ${build} of ${server.id} is unknown to Temporal${d?.versions.length ? `; builds: ${d.versions.map((v) => v.buildId).join(', ')}` : ''}`);
  }
  await setCurrentBuild(client, client.options.namespace, server.id, build, identity);
  return build;
}

/**
 * Moves the open jobs pinned to an old build onto the current one. Only for a release whose
 * replay suite replays that build's histories (README: Upgrading); otherwise start the old build
 * and let them finish there.
 */
export async function adoptRuns(client: Client, server: ServerStatus, fromBuild: string, identity: string): Promise<{ to: string; moved: PinnedRun[] }> {
  const d = await describeServerDeployment(client, client.options.namespace, server.id);
  const to = d?.currentBuildId;
  if (!to) throw new UsageError(`protection server ${server.id} has no current build (drained): start the new build first, it makes itself current`);
  if (to === fromBuild) throw new UsageError(`build ${fromBuild} is the current build of ${server.id}: its jobs need no adopting`);
  const runs = await openPinnedRuns(client, server.id, fromBuild);
  for (const r of runs) await repinRun(client, client.options.namespace, server.id, r, to, identity);
  return { to, moved: runs };
}
