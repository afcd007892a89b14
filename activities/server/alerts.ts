// The protection server's alert step: a protection whose status changed (protection/status.ts)
// posts it to the server's webhook. JSON, signed with HMAC-SHA256 so a receiver can trust it:
//
//   X-Hvprotect-Alert-Id:   <data source>/<sequence>   (the same on every retry: dedupe by it)
//   X-Hvprotect-Timestamp:  unix seconds of this attempt
//   X-Hvprotect-Signature:  sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//
// The receiver recomputes the HMAC over the timestamp and the raw body, compares in constant
// time, and refuses timestamps more than a few minutes old (replays). A receiver that does not
// answer 2xx is retried by Temporal (the activity's retry policy) until it does.
import { createHmac } from 'node:crypto';
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { ProtectionStatus, StatusLevel } from '../../protection/status';

export interface AlertWebhook {
  url: string;
  /** The shared secret the body is signed with. */
  secret: string;
}

export interface ProtectionAlert {
  /** `<data source>/<sequence>`: one per change of status. */
  id: string;
  dataSource: string;
  vm: string;
  server: string;
  from: StatusLevel;
  to: StatusLevel;
  status: ProtectionStatus;
  at: string;
}

export function signAlert(secret: string, timestamp: number, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

/** Posts one alert, signed; throws when the receiver did not answer 2xx (the caller retries). */
export async function postAlert(webhook: AlertWebhook, id: string, payload: unknown): Promise<void> {
  const body = JSON.stringify(payload);
  const timestamp = Math.floor(Date.now() / 1000);
  let res: Response;
  try {
    res = await fetch(webhook.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-hvprotect-alert-id': id,
        'x-hvprotect-timestamp': String(timestamp),
        'x-hvprotect-signature': signAlert(webhook.secret, timestamp, body),
      },
      body,
      signal: AbortSignal.timeout(15_000),
    });
  } catch (err) {
    throw new Error(`alert webhook ${webhook.url} did not answer: ${(err as Error).message}`);
  }
  await res.arrayBuffer().catch(() => undefined);
  if (!res.ok) throw new Error(`alert webhook ${webhook.url} answered ${res.status}`);
}

export interface AlertActivities {
  protectionAlert(alert: ProtectionAlert): Promise<{ delivered: boolean }>;
}

export function createAlertActivities(deps: { webhook?: AlertWebhook; onAlert?: (a: ProtectionAlert) => void }): AlertActivities {
  return {
    async protectionAlert(alert) {
      const log = Context.current().log;
      deps.onAlert?.(alert);
      log.warn(`protection status of ${alert.vm} (${alert.dataSource}): ${alert.from} → ${alert.to}: ${alert.status.reason}`, { alertId: alert.id });
      if (!deps.webhook) return { delivered: false };
      try {
        await postAlert(deps.webhook, alert.id, alert);
      } catch (err) {
        throw ApplicationFailure.retryable((err as Error).message, 'AlertNotDelivered');
      }
      return { delivered: true };
    },
  };
}
