// What one caller can hold of the storage API: requests in flight per credential (more wait,
// their bodies unread so TCP holds them, not our memory; past a queue they are refused), and a
// minimum body rate (a body that trickles in is cut off instead of holding a socket and a buffer).
import { Transform, type TransformCallback } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { fail } from './errors';

export interface StorageApiBounds {
  /** Requests served at once per credential; more wait (default 32). */
  maxInFlightPerCredential?: number;
  /** Requests waiting per credential beyond which the next is refused with 429 (default 256). */
  maxQueuedPerCredential?: number;
  /** A body slower than this, measured over each `bodyRateWindowMs`, is cut off with 408 (default 16 KiB/s). */
  minBodyBytesPerSecond?: number;
  bodyRateWindowMs?: number;
}

export const DEFAULT_BOUNDS: Required<StorageApiBounds> = {
  maxInFlightPerCredential: 32,
  maxQueuedPerCredential: 256,
  minBodyBytesPerSecond: 16 * 1024,
  bodyRateWindowMs: 10_000,
};

class Slots {
  private busy = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly max: number) {}
  get queued(): number {
    return this.waiting.length;
  }
  get idle(): boolean {
    return this.busy === 0 && this.waiting.length === 0;
  }
  /** `ready` resolves when the caller holds a slot; `cancel` returns false when it already does. */
  take(): { ready: Promise<void>; cancel(): boolean } {
    if (this.busy < this.max) {
      this.busy++;
      return { ready: Promise.resolve(), cancel: () => false };
    }
    let grant!: () => void;
    const ready = new Promise<void>((resolve) => {
      grant = resolve;
    });
    this.waiting.push(grant);
    return {
      ready,
      cancel: () => {
        const i = this.waiting.indexOf(grant);
        if (i < 0) return false;
        this.waiting.splice(i, 1);
        return true;
      },
    };
  }
  give(): void {
    const next = this.waiting.shift();
    if (next) next(); // the slot passes on; busy stays
    else this.busy--;
  }
}

/** Passes a body through, failing it when a window goes by with less than the minimum rate. */
class BodyRateGuard extends Transform {
  receivedEncodedLength = 0;
  private windowBytes = 0;
  private readonly timer: NodeJS.Timeout;
  constructor(minBytesPerSecond: number, windowMs: number) {
    super();
    const need = (minBytesPerSecond * windowMs) / 1000;
    this.timer = setInterval(() => {
      if (this.windowBytes < need) {
        const err = Object.assign(new Error(`request body arrived at under ${minBytesPerSecond} bytes/s over ${windowMs / 1000} s; the server cut it off`), { statusCode: 408, code: 'BODY_TOO_SLOW' });
        this.destroy(err);
      }
      this.windowBytes = 0;
    }, windowMs);
    this.timer.unref();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.windowBytes += chunk.length;
    this.receivedEncodedLength += chunk.length;
    cb(null, chunk);
  }
  override _destroy(err: Error | null, cb: (error: Error | null) => void): void {
    clearInterval(this.timer);
    cb(err);
  }
  override _flush(cb: TransformCallback): void {
    clearInterval(this.timer);
    cb();
  }
}

/** Registers both bounds; call after registerAuth (the in-flight bound counts per authenticated name). */
export function registerBounds(app: FastifyInstance, opts: StorageApiBounds = {}): void {
  const b = { ...DEFAULT_BOUNDS, ...opts };
  const perName = new Map<string, Slots>();

  app.addHook('onRequest', async (req, reply) => {
    const name = req.identity?.name;
    if (name === undefined || reply.sent) return;
    let slots = perName.get(name);
    if (!slots) perName.set(name, (slots = new Slots(b.maxInFlightPerCredential)));
    if (slots.queued >= b.maxQueuedPerCredential) {
      return fail(reply, 429, { error: 'TOO_MANY_REQUESTS', message: `${name} has ${b.maxInFlightPerCredential} requests in flight and ${slots.queued} waiting`, hint: 'send fewer requests at once' });
    }
    const s = slots;
    const release = () => {
      s.give();
      if (s.idle) perName.delete(name);
    };
    const slot = s.take();
    const socket = req.raw.socket;
    let onGone: (() => void) | undefined;
    const gone = new Promise<'gone'>((resolve) => {
      onGone = () => resolve('gone');
      socket.once('close', onGone);
    });
    const got = await Promise.race([slot.ready.then(() => 'slot' as const), gone]);
    socket.removeListener('close', onGone!);
    if (got === 'gone') {
      // The client left while waiting: nothing to answer; a slot it was granted meanwhile passes on.
      if (!slot.cancel()) release();
      return reply.hijack();
    }
    reply.raw.once('close', release);
  });

  app.addHook('preParsing', async (req, reply, payload) => {
    const hasBody = req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;
    if (!hasBody) return payload;
    const guard = new BodyRateGuard(b.minBodyBytesPerSecond, b.bodyRateWindowMs);
    payload.on('error', (err) => guard.destroy(err));
    reply.raw.once('close', () => {
      // Answered before the body was read (415, 413): drain the rest as node does, so the next
      // request on this keep-alive connection is parsed.
      payload.unpipe(guard);
      guard.destroy();
      if (!req.raw.complete) payload.resume();
    });
    return payload.pipe(guard);
  });
}
