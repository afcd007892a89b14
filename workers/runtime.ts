// The Temporal Runtime is process-wide: install it once, with our pino logger and metrics.
import { Runtime, makeTelemetryFilterString } from '@temporalio/worker';
import { toTemporalLogger, type Logger } from '../log/logger';

let installed = false;

export interface RuntimeSettings {
  logger: Logger;
  /** host:port for the SDK's Prometheus endpoint (e.g. 127.0.0.1:9464); off when undefined. */
  prometheusBindAddress?: string;
}

export function installRuntime({ logger, prometheusBindAddress }: RuntimeSettings): void {
  if (installed) return;
  installed = true;
  Runtime.install({
    logger: toTemporalLogger(logger),
    telemetryOptions: {
      logging: { filter: makeTelemetryFilterString({ core: 'WARN' }), forward: {} },
      ...(prometheusBindAddress ? { metrics: { prometheus: { bindAddress: prometheusBindAddress } } } : {}),
    },
  });
}
