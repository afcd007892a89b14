// The server's workflow bundle is made on a thread of its own (workers/workflow-bundle.ts): the
// same code the SDK's bundler makes in process (so the same build id), its log lines reach the
// caller's logger, and a bundle that cannot be made is a clear error, not a hang.
import { bundleWorkflowCode } from '@temporalio/worker';
import { bundleWorkflowsApart } from '../../workers/workflow-bundle';
import { workflowsPath } from '../../workers/server';
import { buildIdOf } from '../../temporal/versioning';

function recordingLogger() {
  const lines: Array<{ level: string; message: string }> = [];
  const at = (level: string) => (message: string) => void lines.push({ level, message });
  return { lines, logger: { log: (level: string, message: string) => at(level)(message), trace: at('trace'), debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } };
}

test('the bundle made on a thread is the bundle made in process: same code, same build id', async () => {
  const quiet = recordingLogger();
  const apart = await bundleWorkflowsApart({ workflowsPath: workflowsPath(), workflowInterceptorModules: [], logger: quiet.logger });
  const here = await bundleWorkflowCode({ workflowsPath: workflowsPath(), logger: recordingLogger().logger });
  expect(apart.code.length).toBeGreaterThan(100_000);
  expect(apart.code).toBe(here.code);
  expect(buildIdOf('1.0.0', apart.code)).toBe(buildIdOf('1.0.0', here.code));
  // The bundler's own lines came back to the caller's logger.
  expect(quiet.lines.some((l) => /bundle/i.test(l.message))).toBe(true);
}, 120_000);

test('workflows that cannot be bundled give an error naming the cause', async () => {
  await expect(bundleWorkflowsApart({ workflowsPath: '/nonexistent/workflows.ts', workflowInterceptorModules: [], logger: recordingLogger().logger })).rejects.toThrow(/bundling the workflows failed: .*nonexistent/s);
}, 120_000);
