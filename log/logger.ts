// One logger for the whole project: pino, JSON in production and pretty on a terminal.
// The same logger receives the Temporal SDK's own lines (Runtime logger), so workflow and
// activity log lines carry their context (workflowId, runId, activityType, attempt, taskQueue).
import pino, { type Logger as PinoLogger } from 'pino';
import type { LogLevel, LogMetadata, Logger as TemporalLogger } from '@temporalio/common';

export type Logger = PinoLogger;

export interface LoggerOptions {
  /** Component name on every line, e.g. "server", "agent", "cli". */
  name: string;
  /** "json" or "pretty"; default: pretty on a terminal unless NODE_ENV=production. */
  format?: 'json' | 'pretty';
  level?: string;
  /** Write to this file descriptor / path instead of stdout (e.g. the CLI logs to stderr). */
  destination?: number | string;
}

function chooseFormat(opts: LoggerOptions): 'json' | 'pretty' {
  const fromEnv = process.env.HVPROTECT_LOG_FORMAT;
  if (opts.format) return opts.format;
  if (fromEnv === 'json' || fromEnv === 'pretty') return fromEnv;
  const fd = typeof opts.destination === 'number' ? opts.destination : 1;
  const tty = fd === 2 ? process.stderr.isTTY : process.stdout.isTTY;
  return tty && process.env.NODE_ENV !== 'production' ? 'pretty' : 'json';
}

export function createLogger(opts: LoggerOptions): Logger {
  const level = opts.level ?? process.env.HVPROTECT_LOG_LEVEL ?? 'info';
  const destination = opts.destination ?? 1;
  if (chooseFormat(opts) === 'pretty') {
    // pino-pretty in-process (sync) keeps ordering with other terminal output; fine at CLI volume.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pretty = require('pino-pretty') as typeof import('pino-pretty');
    const stream = pretty({
      destination,
      sync: true,
      colorize: true,
      translateTime: 'HH:MM:ss.l',
      ignore: 'pid,hostname',
      messageKey: 'msg',
    });
    return pino({ name: opts.name, level }, stream);
  }
  return pino({ name: opts.name, level }, pino.destination({ dest: destination, sync: false }));
}

const PINO_LEVEL: Record<LogLevel, 'trace' | 'debug' | 'info' | 'warn' | 'error'> = {
  TRACE: 'trace',
  DEBUG: 'debug',
  INFO: 'info',
  WARN: 'warn',
  ERROR: 'error',
};

/** Adapts a pino logger to the Temporal SDK's Logger interface (for Runtime.install). */
export function toTemporalLogger(logger: Logger): TemporalLogger {
  const emit = (level: LogLevel, message: string, meta?: LogMetadata) => {
    // The SDK passes context (workflowId, activityType, …) in meta; keep it as fields.
    const fields: Record<string, unknown> = {};
    if (meta) {
      for (const [k, v] of Object.entries(meta)) {
        if (k === 'sdkComponent') fields.component = v;
        else if (k === 'error' && v instanceof Error) fields.err = v; // pino's serializer keeps message and stack
        else if (k === 'timestampNanos') continue;
        else fields[k] = v;
      }
    }
    // The bundler's webpack report is a screenful at INFO; it is debugging detail.
    // So is an agent's note that it runs no workflows (by design).
    const effective =
      (level === 'INFO' && message.startsWith('asset workflow-bundle')) || message.startsWith('No workflows registered') ? 'DEBUG' : level;
    logger[PINO_LEVEL[effective]](fields, message);
  };
  return {
    log: emit,
    trace: (m, meta) => emit('TRACE', m, meta),
    debug: (m, meta) => emit('DEBUG', m, meta),
    info: (m, meta) => emit('INFO', m, meta),
    warn: (m, meta) => emit('WARN', m, meta),
    error: (m, meta) => emit('ERROR', m, meta),
  };
}
