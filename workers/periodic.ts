// A job a server runs every so often (the status gauges' states, the shadow storage alerts): run
// at once, then `intervalMs` after each run ends (never two at a time); a failure is logged and
// the next run comes as usual. `idle()` waits for a run under way, for callers that run it by hand.
import type { Logger } from '../log/logger';

export interface Periodic {
  /** Resolves when no scheduled run is under way. */
  idle(): Promise<void>;
  stop(): void;
}

export function startPeriodic(o: { run: () => Promise<unknown>; intervalMs: number; logger: Logger; failure: string }): Periodic {
  let stopped = false;
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout;
  const tick = async () => {
    if (stopped) return;
    running = o.run().then(
      () => undefined,
      (err) => o.logger.warn({ err: (err as Error).message }, o.failure),
    );
    await running;
    if (!stopped) timer = setTimeout(tick, o.intervalMs);
  };
  timer = setTimeout(tick, 0);
  return {
    idle: async () => {
      await running;
    },
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
