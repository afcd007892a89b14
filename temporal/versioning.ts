// Worker deployment versioning of protection servers (Temporal's Worker Deployments).
//
// Each protection server is a deployment of its own, `hvprotect-server-<id>` (its task queue is its
// own, so the servers of a fleet upgrade one at a time without routing each other's work). A
// version's build id names the workflow code it runs: the package version and a digest of the
// workflow bundle, so two builds with the same workflow code share an id and any change to it
// makes a new one.
//
// Behaviours (set per workflow with setWorkflowOptions):
// - backupVm, restoreVm and their children are PINNED: a running job finishes on the code that
//   started it, never replayed by other code half-way through a transfer.
// - protection/<ds>, server/<id> and the schedule's scheduledBackup are AUTO_UPGRADE: they live for
//   months and move to the current version at their next task; their changes go through patched()
//   and the replay suite (test/replay).
//
// The upgrade of one server (README "Upgrading"): `hvprotect upgrade drain` takes away the
// deployment's current version, so new work (scheduled runs, manual jobs, the protection's own
// tasks) waits in Temporal while pinned jobs finish on the running build; once none is left the
// old build is stopped, the new one started, and the new build makes itself current at start:
// what waited runs on it. A build stopped with pinned jobs still open leaves them waiting for it
// (safe: nothing runs them with other code); the new build names them at start, and
// `hvprotect upgrade adopt` moves them to it when the release says it replays that build's
// histories.
import { createHash } from 'node:crypto';
import type { Client } from '@temporalio/client';

export const UNVERSIONED = '__unversioned__';

export function serverDeploymentName(serverId: string): string {
  return `hvprotect-server-${serverId}`;
}

/** `<package version>-<first 12 hex of the SHA-256 of the workflow bundle>`. */
export function buildIdOf(packageVersion: string, workflowBundleCode: string): string {
  return `${packageVersion}-${createHash('sha256').update(workflowBundleCode).digest('hex').slice(0, 12)}`;
}

export function checkBuildId(buildId: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/.test(buildId)) {
    throw new Error(`build id "${buildId}" is not usable: letters, digits, '.', '_', '+' and '-', up to 128, starting with a letter or digit`);
  }
  return buildId;
}

export interface DeploymentVersionState {
  buildId: string;
  /** Temporal's status: CURRENT, RAMPING, DRAINING, DRAINED, INACTIVE. */
  status: string;
  createdAt?: string;
}

export interface DeploymentState {
  deploymentName: string;
  /** Undefined while drained or draining: new work waits. */
  currentBuildId?: string;
  versions: DeploymentVersionState[];
}

function isNotFound(err: unknown): boolean {
  const e = err as { code?: number; message?: string };
  return e?.code === 5 || /not ?found/i.test(e?.message ?? '');
}

function shortStatus(s: unknown): string {
  return String(s ?? 'UNSPECIFIED').replace(/^WORKER_DEPLOYMENT_VERSION_STATUS_/, '');
}

function isoOf(t: { seconds?: unknown; nanos?: number | null } | null | undefined): string | undefined {
  if (!t?.seconds) return undefined;
  return new Date(Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6)).toISOString();
}

/** The deployment of a server as Temporal has it; undefined before its first versioned start. */
export async function describeServerDeployment(client: Client, namespace: string, serverId: string): Promise<DeploymentState | undefined> {
  const deploymentName = serverDeploymentName(serverId);
  let res;
  try {
    res = await client.workflowService.describeWorkerDeployment({ namespace, deploymentName });
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
  const info = res.workerDeploymentInfo;
  const current = info?.routingConfig?.currentDeploymentVersion?.buildId ?? undefined;
  return {
    deploymentName,
    currentBuildId: current || undefined,
    versions: (info?.versionSummaries ?? []).map((v) => ({
      buildId: v.deploymentVersion?.buildId ?? '',
      status: shortStatus(v.status),
      createdAt: isoOf(v.createTime as never),
    })),
  };
}

/** Waits until a worker of this version has polled (Temporal creates the version on first poll). */
export async function waitForVersion(client: Client, namespace: string, serverId: string, buildId: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const d = await describeServerDeployment(client, namespace, serverId);
    if (d?.versions.some((v) => v.buildId === buildId)) return;
    if (Date.now() > deadline) throw new Error(`Temporal did not register build ${buildId} of ${serverDeploymentName(serverId)} within ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Makes a build (or, with '', no build: drained) the version new work goes to. Returns the previous build ('' for none). */
export async function setCurrentBuild(client: Client, namespace: string, serverId: string, buildId: string, identity: string): Promise<string> {
  const res = await client.workflowService.setWorkerDeploymentCurrentVersion({
    namespace,
    deploymentName: serverDeploymentName(serverId),
    buildId,
    identity,
    // The version polls this server's queue only; no other queue of the deployment is missing it.
    ignoreMissingTaskQueues: true,
  });
  return res.previousDeploymentVersion?.buildId ?? '';
}

export interface PinnedRun {
  workflowId: string;
  runId: string;
  type: string;
  buildId: string;
  startedAt?: string;
}

/** Open workflows pinned to a version of this server (all versions, or one build). */
export async function openPinnedRuns(client: Client, serverId: string, buildId?: string): Promise<PinnedRun[]> {
  const deploymentName = serverDeploymentName(serverId);
  const which = buildId ? `TemporalWorkerDeploymentVersion = '${deploymentName}:${buildId}'` : `TemporalWorkerDeployment = '${deploymentName}'`;
  const out: PinnedRun[] = [];
  for await (const wf of client.workflow.list({ query: `${which} AND TemporalWorkflowVersioningBehavior = 'Pinned' AND ExecutionStatus = 'Running'` })) {
    const version = wf.searchAttributes?.TemporalWorkerDeploymentVersion as unknown as string[] | undefined;
    const v = String(version?.[0] ?? '');
    out.push({ workflowId: wf.workflowId, runId: wf.runId, type: wf.type, buildId: buildId ?? v.slice(v.indexOf(':') + 1), startedAt: wf.startTime?.toISOString() });
  }
  return out;
}

/** Pins one open run to another build of the same server (the adopting build must replay its history). */
export async function repinRun(client: Client, namespace: string, serverId: string, run: { workflowId: string; runId: string }, toBuildId: string, identity: string): Promise<void> {
  await client.workflowService.updateWorkflowExecutionOptions({
    namespace,
    workflowExecution: { workflowId: run.workflowId, runId: run.runId },
    identity,
    workflowExecutionOptions: {
      versioningOverride: {
        pinned: {
          behavior: 1, // PINNED_OVERRIDE_BEHAVIOR_PINNED
          version: { deploymentName: serverDeploymentName(serverId), buildId: toBuildId },
        },
      },
    },
    updateMask: { paths: ['versioning_override'] },
  });
}
