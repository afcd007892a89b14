// The workflow bundle, made on a thread of its own. Webpack's compile keeps what it built in the
// calling isolate for the life of the process: bundled on the server's main thread, a started
// server held ~65 MiB more (RSS 154 against 105 MiB right after the bundle, V8's heap 42 against
// 20 MiB in use). The thread ends with the bundle made, and its memory with it.
import { Worker } from 'node:worker_threads';
import type { Logger as SdkLogger } from '@temporalio/worker';

const SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const say = (level) => (message, meta) => parentPort.postMessage({ log: { level, message: String(message), meta: meta && JSON.parse(JSON.stringify(meta)) } });
const logger = { log: (level, message, meta) => say(level)(message, meta), trace: say('TRACE'), debug: say('DEBUG'), info: say('INFO'), warn: say('WARN'), error: say('ERROR') };
require(workerData.sdk)
  .bundleWorkflowCode({ workflowsPath: workerData.workflowsPath, workflowInterceptorModules: workerData.workflowInterceptorModules, logger })
  .then((b) => parentPort.postMessage({ code: b.code }), (err) => parentPort.postMessage({ error: String((err && err.stack) || err) }));
`;

/** bundleWorkflowCode on a worker thread; its log lines go to `logger`. */
export function bundleWorkflowsApart(o: { workflowsPath: string; workflowInterceptorModules: string[]; logger: SdkLogger }): Promise<{ code: string }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(SOURCE, { eval: true, workerData: { sdk: require.resolve('@temporalio/worker'), workflowsPath: o.workflowsPath, workflowInterceptorModules: o.workflowInterceptorModules } });
    let settled = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      fn();
      void w.terminate();
    };
    w.on('message', (m: { log?: { level: string; message: string; meta?: Record<string, unknown> }; code?: string; error?: string }) => {
      if (m.log) {
        const level = m.log.level.toLowerCase() as 'trace' | 'debug' | 'info' | 'warn' | 'error';
        (o.logger[level] ?? o.logger.info).call(o.logger, m.log.message, m.log.meta);
        return;
      }
      if (m.code !== undefined) settle(() => resolve({ code: m.code! }));
      else settle(() => reject(new Error(`bundling the workflows failed: ${m.error}`)));
    });
    w.once('error', (err) => settle(() => reject(err)));
    w.once('exit', (code) => settle(() => reject(new Error(`the workflow bundler thread exited (${code}) before the bundle was made`))));
  });
}
