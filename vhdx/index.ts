// The VHDX disk format library: read fixed, dynamic and differencing disks (AVHDX chains), write
// dynamic and differencing disks crash-safe through the VHDX log, merge a checkpoint into its parent.
export { VhdxError } from './errors';
export { openVhdx } from './disk';
export type { ByteRange, VhdxDisk, OpenOptions } from './disk';
export { createDynamicVhdx, createFixedVhdx, createDifferencingVhdx, writeRawAsDynamicVhdx } from './create';
export type { DynamicOptions } from './create';
export { mergeDifferencingIntoParent } from './merge';
export type { MergeOptions } from './merge';
