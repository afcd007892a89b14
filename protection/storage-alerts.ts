// Shadow storage alerts: a data source whose recovery points use more than 90% of its shadow
// storage limit is alerted once, and once more when it is back under 85% (so a use that hovers at
// 90% does not alert on every look). The protection server looks every `intervalMs` at its
// repository; what was alerted is kept in <state-dir>/storage-alerts.json, so a restart neither
// repeats nor loses one. A delivery that fails is tried again at the next look.
import fs from 'node:fs';
import type { Logger } from '../log/logger';
import type { Repository } from '../repository';
import { postAlert, type AlertWebhook } from '../activities/server/alerts';
import { writeFileDurable } from '../repository/durable';
import { startPeriodic } from '../workers/periodic';

export const OVER = 0.9;
export const BACK_UNDER = 0.85;

export interface StorageAlert {
  /** `shadow/<data source>/<sequence>`. */
  id: string;
  kind: 'shadow-storage';
  dataSource: string;
  server: string;
  state: 'over' | 'back-under';
  usedBytes: number;
  maximumBytes: number;
  percent: number;
  at: string;
}

type Record_ = Record<string, { over: boolean; sequence: number }>;

export function startStorageAlerts(o: { repository: Repository; serverId: string; stateFile: string; webhook?: AlertWebhook; logger: Logger; intervalMs?: number; onAlert?: (a: StorageAlert) => void }): { check(): Promise<void>; stop(): void } {
  let record: Record_ = {};
  try {
    record = JSON.parse(fs.readFileSync(o.stateFile, 'utf8')) as Record_;
  } catch {
    // first start
  }
  // Atomic (temp + rename), not fsynced: a record lost to a power cut repeats one alert.
  const save = () => writeFileDurable(o.stateFile, JSON.stringify(record), { fsync: false });
  const check = async () => {
    for (const u of await o.repository.listShadowStorage()) {
      if (!u.maximumBytes) continue;
      const ratio = u.usedBytes / u.maximumBytes;
      const r = record[u.dataSource] ?? { over: false, sequence: 0 };
      const to = !r.over && ratio > OVER ? 'over' : r.over && ratio < BACK_UNDER ? 'back-under' : undefined;
      if (!to) continue;
      const alert: StorageAlert = {
        id: `shadow/${u.dataSource}/${r.sequence + 1}`,
        kind: 'shadow-storage',
        dataSource: u.dataSource,
        server: o.serverId,
        state: to,
        usedBytes: u.usedBytes,
        maximumBytes: u.maximumBytes,
        percent: Math.round(ratio * 1000) / 10,
        at: new Date().toISOString(),
      };
      o.logger.warn({ alertId: alert.id, percent: alert.percent }, `shadow storage of ${u.dataSource} ${to === 'over' ? 'over' : 'back under'} ${to === 'over' ? OVER * 100 : BACK_UNDER * 100}% of its limit`);
      o.onAlert?.(alert);
      if (o.webhook) await postAlert(o.webhook, alert.id, alert);
      record[u.dataSource] = { over: to === 'over', sequence: r.sequence + 1 };
      await save();
    }
  };
  const loop = startPeriodic({ run: check, intervalMs: o.intervalMs ?? 60_000, logger: o.logger, failure: 'shadow storage alerts: will try again' });
  return {
    check: async () => {
      await loop.idle();
      await check();
    },
    stop: loop.stop,
  };
}
