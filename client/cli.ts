#!/usr/bin/env node
// hvprotect: the command-line tool and the two processes (server, agent).
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { createLogger } from '../log/logger';
import { connectClient, loadTemporalSettings } from '../temporal/connection';
import { SERVER_TASK_QUEUE } from '../temporal/task-queues';
import { startServer } from '../workers/server';
import { startDevStack } from './dev';
import { EXIT_USAGE, reportAndExit } from './errors';

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

export function buildProgram(): Command {
  const program = new Command('hvprotect')
    .description('Hyper-V virtual machine protection; every backup is a durable Temporal workflow.')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('dev')
    .description('Run the embedded default: Temporal dev server with Web UI and the protection server')
    .option('--state-dir <dir>', 'where state is kept between runs', '.hvprotect/dev')
    .option('--temporal-port <port>', 'Temporal frontend gRPC port', port, 7233)
    .option('--ui-port <port>', 'Temporal Web UI port', port, 8233)
    .option('--headless', 'no Web UI', false)
    .addHelpText('after', '\nExamples:\n  npm start\n  hvprotect dev --temporal-port 7300 --ui-port 8300\n')
    .action(async (o) => {
      const logger = createLogger({ name: 'hvprotect' });
      const stack = await startDevStack({
        stateDir: o.stateDir,
        temporalPort: o.temporalPort,
        uiPort: o.uiPort,
        headless: o.headless,
        logger,
      });
      const lines = [
        '',
        'hvprotect is running (Ctrl-C stops everything; a second start resumes from the same state).',
        `  Temporal:      ${stack.temporal.address} (namespace ${stack.temporal.namespace})`,
        stack.temporal.uiUrl ? `  Web UI:        ${stack.temporal.uiUrl}/namespaces/${stack.temporal.namespace}/workflows` : '',
        `  Server queue:  ${stack.server.taskQueue}`,
        `  Try:           TEMPORAL_ADDRESS=${stack.temporal.address} node dist/client/cli.js doctor`,
        '',
      ].filter((l) => l !== '');
      process.stdout.write(`${lines.join('\n')}\n`);
      await untilSignal(() => stack.stop(), (m) => logger.info(m));
    });

  program
    .command('server')
    .description('Run the protection server: workflows and server activities on task queue hvprotect-server')
    .addHelpText('after', '\nConnection: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS_*, TEMPORAL_PROFILE.\n\nExample:\n  TEMPORAL_ADDRESS=temporal.example.com:7233 hvprotect server\n')
    .action(async () => {
      const logger = createLogger({ name: 'hvprotect-server' });
      const server = await startServer({ logger });
      await Promise.race([server.done, untilSignal(() => server.shutdown(), (m) => logger.info(m))]);
    });

  program
    .command('doctor')
    .description('Check that Temporal answers and a protection server runs workflows (runs the self-check workflow)')
    .option('--timeout <seconds>', 'how long to wait for a protection server', (v) => Number(v), 30)
    .option('--json', 'print the result as JSON', false)
    .addHelpText('after', '\nExample:\n  hvprotect doctor --timeout 10\n')
    .action(async (o) => {
      const settings = loadTemporalSettings();
      const client = await connectClient(settings);
      const started = Date.now();
      const handle = await client.workflow.start('selfCheck', {
        taskQueue: SERVER_TASK_QUEUE,
        workflowId: `self-check/${new Date().toISOString()}`,
        workflowExecutionTimeout: `${o.timeout} seconds`,
      });
      try {
        const result = await handle.result();
        const ms = Date.now() - started;
        if (o.json) process.stdout.write(`${JSON.stringify({ ok: true, ms, ...result })}\n`);
        else
          process.stdout.write(
            `ok: Temporal at ${settings.address} (namespace ${settings.namespace}); protection server ` +
              `${result.server.hostname} answered on ${result.server.taskQueue} in ${ms} ms\n`,
          );
      } catch {
        throw new Error(
          `no protection server answered on task queue ${SERVER_TASK_QUEUE} within ${o.timeout} s: ` +
            'start one with `hvprotect server` (or `npm start`)',
        );
      } finally {
        await client.connection.close();
      }
    });

  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
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
