// Connection settings the Temporal way: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
// TEMPORAL_TLS_*, TEMPORAL_PROFILE and the TOML config profile (TEMPORAL_CONFIG_FILE), read by
// @temporalio/envconfig. Without any of them: the local dev server at localhost:7233, "default".
// HVPROTECT_PAYLOAD_KEY_FILE (or --payload-key-file) seals hvprotect's payloads (payload-codec.ts).
import { Connection, Client, type ConnectionOptions } from '@temporalio/client';
import { closeSafeRetryInterceptor } from './grpc-retry';
import type { DataConverter } from '@temporalio/common';
import { AesGcmPayloadCodec, NoPayloadKeyCodec } from './payload-codec';
import { NativeConnection } from '@temporalio/worker';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { NativeConnectionOptions } from '@temporalio/worker';

export const DEFAULT_TEMPORAL_ADDRESS = 'localhost:7233';
export const DEFAULT_NAMESPACE = 'default';

export interface TemporalSettings {
  address: string;
  namespace: string;
  /** Where the address came from, for error messages. */
  source: string;
  connectionOptions: NativeConnectionOptions;
  /** The payload key file (HVPROTECT_PAYLOAD_KEY_FILE); without one, payloads travel in plain JSON. */
  payloadKeyFile?: string;
  payloadCodec?: AesGcmPayloadCodec;
}

export class TemporalUnreachable extends Error {
  constructor(readonly address: string, cause: string) {
    super(
      `cannot reach the Temporal server at ${address} (${cause}). ` +
        'Start the embedded one with `npm start` (or `temporal server start-dev`), ' +
        'or point TEMPORAL_ADDRESS / TEMPORAL_PROFILE at your Temporal cluster.',
    );
    this.name = 'TemporalUnreachable';
  }
}

export class TemporalSettingsInvalid extends Error {
  override name = 'TemporalSettingsInvalid';
}

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

export function loadTemporalSettings(env: Record<string, string | undefined> = process.env): TemporalSettings {
  let config;
  try {
    config = loadClientConnectConfig({
      profile: env.TEMPORAL_PROFILE,
      overrideEnvVars: Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined)) as Record<
        string,
        string
      >,
    });
  } catch (err) {
    throw new TemporalSettingsInvalid(
      `cannot read the Temporal client configuration: ${(err as Error).message}. ` +
        'Check TEMPORAL_CONFIG_FILE / TEMPORAL_PROFILE and the TEMPORAL_* variables.',
    );
  }
  const fromConfig = config.connectionOptions.address;
  const address = fromConfig || DEFAULT_TEMPORAL_ADDRESS;
  const source = env.TEMPORAL_ADDRESS ? 'TEMPORAL_ADDRESS' : fromConfig ? 'config profile' : 'default';
  const m = HOST_PORT.exec(address);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new TemporalSettingsInvalid(
      `Temporal address "${address}" (from ${source}) is not host:port, e.g. localhost:7233 or temporal.example.com:7233`,
    );
  }
  const settings: TemporalSettings = {
    address,
    namespace: config.namespace || DEFAULT_NAMESPACE,
    source,
    connectionOptions: { ...config.connectionOptions, address },
  };
  return env.HVPROTECT_PAYLOAD_KEY_FILE ? withPayloadKeyFile(settings, env.HVPROTECT_PAYLOAD_KEY_FILE) : settings;
}

/** The same settings with payloads sealed by the keys of `file` (PayloadKeyFileError when unusable). */
export function withPayloadKeyFile(settings: TemporalSettings, file: string): TemporalSettings {
  return { ...settings, payloadKeyFile: file, payloadCodec: AesGcmPayloadCodec.fromFile(file) };
}

/** What every Client and Worker hvprotect makes converts payloads with. */
export function dataConverterOf(settings: TemporalSettings): DataConverter {
  if (!settings.payloadCodec) return { payloadCodecs: [new NoPayloadKeyCodec()] };
  return { payloadCodecs: [settings.payloadCodec], failureConverterPath: require.resolve('./failure-converter') };
}

/** Workflow interceptors of a server worker: with a codec, the VM name stays out of search attributes. */
export function workflowInterceptorModules(settings: TemporalSettings): string[] {
  return settings.payloadCodec ? [require.resolve('./vm-names-out-of-search-attributes')] : [];
}

/** Whether this client seals payloads (then plain-text places such as search attributes get no VM names). */
export function encryptsPayloads(client: Client): boolean {
  return client.options.loadedDataConverter.payloadCodecs.some((c) => c instanceof AesGcmPayloadCodec);
}

function describeCause(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0].slice(0, 200);
}

/**
 * Connection.connect with the retry of grpc-retry.ts, which cannot throw out of its timer once the
 * connection is closed: every gRPC connection to Temporal that hvprotect (and its tests) makes.
 */
export function connectTemporal(options: ConnectionOptions): Promise<Connection> {
  return Connection.connect({ interceptors: [closeSafeRetryInterceptor()], ...options });
}

/** A Temporal client, or a TemporalUnreachable that says the address tried and what to do. */
export async function connectClient(
  settings: TemporalSettings = loadTemporalSettings(),
  opts: { connectTimeoutMs?: number } = {},
): Promise<Client> {
  const { address, namespace, connectionOptions } = settings;
  let connection: Connection;
  try {
    connection = await connectTemporal({
      address,
      tls: connectionOptions.tls,
      apiKey: connectionOptions.apiKey,
      metadata: connectionOptions.metadata,
      connectTimeout: opts.connectTimeoutMs ?? 5_000,
    });
    await connection.workflowService.getSystemInfo({});
  } catch (err) {
    throw new TemporalUnreachable(address, describeCause(err));
  }
  return new Client({ connection, namespace, dataConverter: dataConverterOf(settings) });
}

/** The worker-side connection, with the same settings and error. */
export async function connectWorker(settings: TemporalSettings = loadTemporalSettings()): Promise<NativeConnection> {
  try {
    return await NativeConnection.connect(settings.connectionOptions);
  } catch (err) {
    throw new TemporalUnreachable(settings.address, describeCause(err));
  }
}
