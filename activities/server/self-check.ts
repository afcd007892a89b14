import os from 'node:os';
import { Context } from '@temporalio/activity';

export async function describeProtectionServer(): Promise<{ hostname: string; pid: number; node: string; taskQueue: string }> {
  const info = Context.current().info;
  Context.current().log.info('protection server answering self-check');
  return { hostname: os.hostname(), pid: process.pid, node: process.version, taskQueue: info.taskQueue };
}
