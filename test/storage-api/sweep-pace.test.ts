// The pace of the storage API's scavenges adapts to the full collections it sees
// (storage-api/young-gc.ts): a full collection soon after the last one while bodies flow halves
// the body bytes between two scavenges, down to a floor; a long stretch of body without one
// doubles them again, up to the ceiling. The last case sees a real mark-compact through V8.
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import {
  FULL_GC_TOO_SOON_BYTES,
  MIN_SWEEP_EVERY_BYTES,
  RELAX_AFTER_BYTES,
  SWEEP_EVERY_BYTES,
  bodyBytesReceived,
  fullCollectionSeen,
  sweepPace,
  youngSweeps,
} from '../../storage-api/young-gc';

const MiB = 1024 * 1024;

/** Back to the ceiling, with the counters of "since the last full collection" at zero. */
function relaxed(): void {
  fullCollectionSeen(); // no body since: resets, changes nothing
  while (sweepPace() < SWEEP_EVERY_BYTES) bodyBytesReceived(RELAX_AFTER_BYTES);
  fullCollectionSeen();
}

test('full collections close together tighten the pace, down to the floor', () => {
  relaxed();
  expect(sweepPace()).toBe(SWEEP_EVERY_BYTES);
  const paces: number[] = [];
  for (let i = 0; i < 5; i++) {
    bodyBytesReceived(10 * MiB);
    fullCollectionSeen();
    paces.push(sweepPace());
  }
  expect(paces).toEqual([8 * MiB, 4 * MiB, MIN_SWEEP_EVERY_BYTES, MIN_SWEEP_EVERY_BYTES, MIN_SWEEP_EVERY_BYTES]);
  // Tightened, the scavenges come at the new pace.
  const before = youngSweeps();
  for (let i = 0; i < 3 * 32; i++) bodyBytesReceived(MIN_SWEEP_EVERY_BYTES / 32); // pieces of 64 KiB
  expect(youngSweeps() - before).toBe(3);
});

test('a full collection far apart, or with no body since, leaves the pace alone', () => {
  relaxed();
  bodyBytesReceived(FULL_GC_TOO_SOON_BYTES);
  fullCollectionSeen();
  expect(sweepPace()).toBe(SWEEP_EVERY_BYTES);
  fullCollectionSeen(); // idle: the memory reducer
  expect(sweepPace()).toBe(SWEEP_EVERY_BYTES);
});

test('a long stretch of body without a full collection relaxes the pace step by step', () => {
  relaxed();
  for (let i = 0; i < 3; i++) {
    bodyBytesReceived(MiB);
    fullCollectionSeen();
  }
  expect(sweepPace()).toBe(MIN_SWEEP_EVERY_BYTES);
  bodyBytesReceived(RELAX_AFTER_BYTES - 1);
  expect(sweepPace()).toBe(MIN_SWEEP_EVERY_BYTES);
  bodyBytesReceived(1);
  expect(sweepPace()).toBe(2 * MIN_SWEEP_EVERY_BYTES);
  bodyBytesReceived(RELAX_AFTER_BYTES);
  bodyBytesReceived(RELAX_AFTER_BYTES);
  expect(sweepPace()).toBe(SWEEP_EVERY_BYTES);
});

test("V8's own mark-compacts are seen while bodies flow", async () => {
  relaxed();
  bodyBytesReceived(MiB); // the observer starts with the first body
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  v8.setFlagsFromString('--no-expose-gc');
  const paces = [sweepPace()];
  for (let i = 0; i < 2; i++) {
    bodyBytesReceived(MiB);
    gc(); // a full collection
    // The observer hears of it once the collection's entry is delivered.
    for (let t = 0; t < 100 && sweepPace() === paces[paces.length - 1]; t++) await new Promise((r) => setTimeout(r, 10));
    paces.push(sweepPace());
  }
  expect(paces).toEqual([SWEEP_EVERY_BYTES, 8 * MiB, 4 * MiB]);
});
