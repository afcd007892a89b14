// How ConvertTo-Json output of Hyper-V objects is read (pure functions of hypervisor/hyperv/parse.ts).
import { asArray, clusterGroupState, guestFamily, isoDate, mergeRanges, replicaRole, storageOf, vmState } from '../../hypervisor/hyperv/parse';

test('storage kind from the path', () => {
  expect(storageOf('C:\\ClusterStorage\\Volume1\\vm\\a.vhdx')).toEqual({ storage: 'csv' });
  expect(storageOf('c:\\clusterstorage\\vol2\\a.vhdx')).toEqual({ storage: 'csv' });
  expect(storageOf('\\\\?\\C:\\ClusterStorage\\Volume1\\a.vhdx')).toEqual({ storage: 'csv' });
  expect(storageOf('\\\\fs01\\vms\\a.vhdx')).toEqual({ storage: 'smb', fileServer: 'fs01' });
  expect(storageOf('\\\\?\\UNC\\fs02.corp\\vms$\\a.vhdx')).toEqual({ storage: 'smb', fileServer: 'fs02.corp' });
  expect(storageOf('D:\\Hyper-V\\a.vhdx')).toEqual({ storage: 'local' });
  expect(storageOf('E:\\ClusterStorageBackup\\a.vhdx')).toEqual({ storage: 'local' });
});

test('VM states as names or VMState numbers, transitional ones included', () => {
  expect([2, 3, 6, 9, 10, 32773, 32776, 32779, 4].map(vmState)).toEqual(['running', 'off', 'saved', 'paused', 'running', 'saved', 'paused', 'saved', 'off']);
  expect(['Running', 'Off', 'Saved', 'Paused', 'RunningCritical', 'PausedCritical', 'Stopping'].map(vmState)).toEqual([
    'running', 'off', 'saved', 'paused', 'running', 'paused', 'off',
  ]);
});

test('cluster group state, replica role, guest family', () => {
  expect(['Online', 'Offline', 'PartialOnline', 'Failed', 'Pending', 0, 1, 2, 3].map(clusterGroupState)).toEqual([
    'online', 'offline', 'partial', 'failed', 'partial', 'online', 'offline', 'failed', 'partial',
  ]);
  expect(['None', 'Primary', 'Replica', 'ExtendedReplica', 0, 1, 2, 3, undefined].map(replicaRole)).toEqual([
    'none', 'primary', 'replica', 'replica', 'none', 'primary', 'replica', 'replica', 'none',
  ]);
  expect(guestFamily({ OSName: 'Windows Server 2016 Datacenter' })).toBe('windows');
  expect(guestFamily({ OSName: 'CentOS Linux 7 (Core)' })).toBe('linux');
  expect(guestFamily({ OSName: 'FreeBSD 13.2' })).toBe('other');
  expect(guestFamily({})).toBe('other');
});

test('ConvertTo-Json shapes: single object, {value,Count}, /Date()/', () => {
  expect(asArray(null)).toEqual([]);
  expect(asArray({ a: 1 })).toEqual([{ a: 1 }]);
  expect(asArray({ value: [1, 2], Count: 2 })).toEqual([1, 2]);
  expect(asArray([1])).toEqual([1]);
  expect(isoDate('/Date(1700000000000)/')).toBe('2023-11-14T22:13:20.000Z');
  expect(isoDate('\\/Date(1700000000000+0100)\\/')).toBe('2023-11-14T22:13:20.000Z');
  expect(isoDate('2026-11-24T02:00:03.1234567Z')).toBe('2026-11-24T02:00:03.123Z');
});

test('changed ranges are sorted, merged and clipped', () => {
  expect(
    mergeRanges(
      [
        { offset: 100, length: 50 },
        { offset: 0, length: 10 },
        { offset: 140, length: 20 },
        { offset: 10, length: 5 },
        { offset: 990, length: 100 },
        { offset: 2000, length: 1 },
      ],
      1000,
    ),
  ).toEqual([
    { offset: 0, length: 15 },
    { offset: 100, length: 60 },
    { offset: 990, length: 10 },
  ]);
});
