// "Is the VM still on this host?" during a long transfer. The transfer asks after every batch so
// that a VM that live-migrated away is followed to its new owner (the position travels in the
// failure). Where the answer is cheap (the lab reads its state file) the ask is awaited after
// every batch, as before. On Hyper-V each ask is a fresh PowerShell process (~0.5-2 s): awaited
// after every 16 MiB batch it would cap a transfer at ~10-30 MiB/s and run hundreds of processes
// per disk. There it is asked at most every `everyMs`, in the background, and a "moved" answer is
// acted on at the batch after it came: the pipeline never waits for PowerShell, and a VM that
// moved is noticed within everyMs plus one ask.

export interface PlacementCheck {
  /** Called after each batch: throws what the check found (the VM moved), else returns. */
  afterBatch(): Promise<void>;
  /** Checks asked so far (for logs and tests). */
  readonly asked: number;
}

export function placementCheck(check: () => Promise<void>, everyMs: number, now: () => number = Date.now): PlacementCheck {
  let asked = 0;
  let lastAsked = now();
  let pending: Promise<void> | undefined;
  let found: { err: unknown } | undefined;
  return {
    get asked() {
      return asked;
    },
    async afterBatch() {
      if (everyMs <= 0) {
        asked++;
        return check();
      }
      if (found) throw found.err;
      if (pending || now() - lastAsked < everyMs) return;
      lastAsked = now();
      asked++;
      pending = check()
        .catch((err: unknown) => {
          found = { err };
        })
        .finally(() => {
          pending = undefined;
        });
    },
  };
}
