// Heartbeats while a step runs, so a crashed worker's step is retried after the heartbeat
// timeout (seconds) instead of the start-to-close timeout (minutes).
import { Context } from '@temporalio/activity';

export async function withHeartbeat<T>(fn: () => Promise<T>, everyMs = 1000): Promise<T> {
  let ctx: Context | undefined;
  try {
    ctx = Context.current();
  } catch {
    return fn(); // not in an activity (tests calling the function directly)
  }
  ctx.heartbeat();
  const timer = setInterval(() => ctx!.heartbeat(), everyMs);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}
