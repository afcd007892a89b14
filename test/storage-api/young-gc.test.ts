// The storage API's paced scavenges (storage-api/young-gc.ts): they run, and the V8 flag that
// reaches V8's gc is on only for the one context that takes it, so no context made afterwards
// (a protection server's workflow sandboxes) finds a global gc.
import * as vm from 'node:vm';
import { SWEEP_EVERY_BYTES, bodyBytesReceived, youngSweeps } from '../../storage-api/young-gc';

test('a scavenge per 16 MiB of body, and no global gc in contexts made afterwards', () => {
  // Run without --expose-gc, as every launcher of the storage API is.
  expect(typeof (globalThis as { gc?: unknown }).gc).toBe('undefined');
  expect(vm.runInNewContext('typeof gc')).toBe('undefined');
  const before = youngSweeps();
  bodyBytesReceived(SWEEP_EVERY_BYTES - 1);
  expect(youngSweeps()).toBe(before);
  bodyBytesReceived(1);
  expect(youngSweeps()).toBe(before + 1);
  expect(vm.runInNewContext('typeof gc')).toBe('undefined');
  // The gc it holds still works after the flag is off again.
  bodyBytesReceived(SWEEP_EVERY_BYTES);
  expect(youngSweeps()).toBe(before + 2);
});
