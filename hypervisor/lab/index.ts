// The lab hypervisor: file-backed Hyper-V hosts for Linux. See lab.ts (the lab API and its sections),
// lab-hypervisor.ts (the adapter), guest-write-load.ts (the guest) and state.ts (the on-disk layout).
export { Lab, LabError } from './lab';
export type {
  LabDiskSpec,
  LabImportOptions,
  LabVmConfig,
  LabVmPatch,
  LabVmSpec,
  MigrationResult,
  StartWriteLoadOptions,
  StorageSpec,
  WriteLoadProcess,
} from './lab';
export { LabHypervisor } from './lab-hypervisor';
export { runGuestWriteLoad } from './guest-write-load';
export type { GuestWriteLoadOptions, WriteLoadResult } from './guest-write-load';
export { expectedDiskContent, guestWrite, guestWriteRanges, initialDiskContent, type InitialContent } from './disk-content';
export { formatTrackingId, parseTrackingId } from './change-tracking';
export { LabLockTimeout } from './lock';
export type { DiskLocation, LabState, VmRecord } from './state';
export { createSampleLab } from './sample';
export type { SampleLab, SampleLabOptions } from './sample';
export { labCommand } from './cli';
