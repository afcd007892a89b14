// Hyper-V adapter: HypervisorAdapter over PowerShell and WMI (see README.md in this folder).
export {
  HyperVHypervisor,
  findPowerShell,
  PENDING_RCT_PREFIX,
  type HyperVOptions,
  type ReleasedCheckpoint,
  type ReferencePoint,
  type VhdxImage,
} from './hyperv-hypervisor';
export { psQuote, runPowerShell, RESULT_MARKER } from './powershell';
export { buildScript, type ScriptOp } from './scripts';
