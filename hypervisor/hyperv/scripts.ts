// The PowerShell the adapter runs, one script per operation.
//
// Every script starts with the same preamble: strict errors, UTF-8 output, the caller's values
// decoded from base64 JSON into `$p` (never spliced into the code), helpers to find the VM and to
// wait for a WMI job, and one `HVPROTECT-JSON:` line at the end (see powershell.ts).
//
// WMI (namespace root\virtualization\v2), as documented by Microsoft (learn.microsoft.com,
// windows/win32/hyperv_v2) and used by Microsoft's backup sample (Virtualization-Documentation,
// hyperv-samples/taylorb-wmi/xhypervbackup):
//   Msvm_VirtualSystemSnapshotService.CreateSnapshot(
//     [in] CIM_ComputerSystem REF AffectedSystem, [in] string SnapshotSettings,
//     [in] uint16 SnapshotType, [in,out] CIM_VirtualSystemSettingData REF ResultingSnapshot,
//     [out] CIM_ConcreteJob REF Job)                       0 = done, 4096 = job started
//     SnapshotSettings = embedded Msvm_VirtualSystemSnapshotSettingData
//       { ConsistencyLevel: 1 application-consistent | 2 crash-consistent,
//         IgnoreNonSnapshottableDisks: true }; SnapshotType 32768 = recovery snapshot (the sample's).
//   Msvm_VirtualSystemSnapshotService.ConvertToReferencePoint(
//     [in] CIM_VirtualSystemSettingData REF AffectedSnapshot, [in] string ReferencePointSettings,
//     [in,out] Msvm_VirtualSystemReferencePoint REF ResultingReferencePoint, [out] CIM_ConcreteJob REF Job)
//     "The snapshot gets deleted as a side effect. Only recovery snapshots can be converted."
//     (It is a method of the snapshot service, not of Msvm_VirtualSystemReferencePointService.)
//   Msvm_VirtualSystemReferencePointService.DestroyReferencePoint(
//     [in] Msvm_VirtualSystemReferencePoint REF AffectedReferencePoint, [out] CIM_ConcreteJob REF Job)
//   Msvm_VirtualSystemReferencePoint { InstanceID, ReferencePointType (1 log, 2 RCT),
//     ConsistencyLevel, VirtualSystemIdentifier, VirtualDiskIdentifiers[], ResilientChangeTrackingIdentifiers[] }
//   Msvm_ImageManagementService.GetVirtualDiskChanges(
//     [in] string Path, [in] string LimitId, [in] string TargetSnapshotId (VHD Set only: not passed),
//     [in] uint64 ByteOffset, [in] uint64 ByteLength ("must be less than the size of the disk"),
//     [out] uint64 ProcessedByteLength ("may be equal to ByteLength or less"),
//     [out] uint64 ChangedByteOffsets[], [out] uint64 ChangedByteLengths[], [out] CIM_ConcreteJob REF Job)
//   Msvm_VirtualSystemSnapshotService.DestroySnapshot([in] CIM_VirtualSystemSettingData REF AffectedSnapshot,
//     [out] CIM_ConcreteJob REF Job)
//   Msvm_ConcreteJob.JobState: 2 New, 3 Starting, 4 Running, 5 Suspended, 6 Shutting Down, 7 Completed,
//     8 Terminated, 9 Killed, 10 Exception; RequestStateChange(RequestedState 4) asks it to terminate.
//   Msvm_KvpExchangeComponent.GuestIntrinsicExchangeItems: XML <INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem">
//     with PROPERTY Name (OSName, OSVersion, OSPlatformId…) and Data.

import { encodeParams } from './powershell';

export type ScriptOp =
  | 'list'
  | 'locate'
  | 'inspect'
  | 'create-checkpoint'
  | 'describe-checkpoint'
  | 'disk-changes'
  | 'release-checkpoint'
  | 'destroy-reference-point'
  | 'list-reference-points'
  | 'checkpoints-by-label'
  | 'power';

const PREAMBLE = String.raw`
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$WarningPreference = 'SilentlyContinue'
try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding($false) } catch { }
# Windows PowerShell 5.1 writes arrays as {"value":[...],"Count":n} while this type data is loaded.
Remove-TypeData -TypeName System.Array -ErrorAction SilentlyContinue
$p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('__PARAMS__')) | ConvertFrom-Json
$ns = 'root\virtualization\v2'
$script:step = 'start'
$script:failure = $null

function Write-HvpResult($result) {
  $json = ConvertTo-Json -InputObject @{ ok = $true; result = $result } -Depth 12 -Compress
  [Console]::Out.WriteLine('HVPROTECT-JSON:' + $json)
}

function Stop-Hvp([string]$type, [string]$message, $extra) {
  $e = @{ type = $type; message = $message; step = $script:step }
  if ($extra) { foreach ($k in $extra.Keys) { $e[$k] = $extra[$k] } }
  [Console]::Out.WriteLine('HVPROTECT-JSON:' + (ConvertTo-Json -InputObject @{ ok = $false; error = $e } -Depth 8 -Compress))
  exit 1
}

# Throws (so finally blocks run) with details the outer catch adds to the error.
function Fail-Hvp([string]$message, $extra) {
  $script:failure = $extra
  throw $message
}

function Find-HvpClusterOwner([string]$ref) {
  if (-not (Get-Command Get-ClusterResource -ErrorAction SilentlyContinue)) { return $null }
  try {
    foreach ($r in @(Get-ClusterResource -ErrorAction Stop | Where-Object { [string]$_.ResourceType -eq 'Virtual Machine' })) {
      $id = [string](Get-ClusterParameter -InputObject $r -Name VmID -ErrorAction Stop).Value
      if ($id -eq $ref -or [string]$r.OwnerGroup -eq $ref) { return @{ node = [string]$r.OwnerNode; vmId = $id } }
    }
  } catch { }
  return $null
}

# The VM by id or exact name; a VM of this cluster owned by another node is VmNotOnHost.
function Find-HvpVm([string]$ref, [switch]$Probe) {
  $script:step = 'Get-VM'
  $g = [guid]::Empty
  if ([guid]::TryParse($ref, [ref]$g)) {
    $found = @(try { Get-VM -Id $g -ErrorAction Stop } catch { })
  } else {
    # Get-VM -Name takes wildcards; an exact comparison keeps '[', '*' and '?' literal.
    $found = @(Get-VM | Where-Object { $_.Name -eq $ref })
  }
  if ($found.Count -gt 1) {
    Stop-Hvp 'HypervisorCommandFailed' ('{0} VMs on this host are named like that; use the VM id' -f $found.Count) @{ cmdlet = 'Get-VM' }
  }
  if ($found.Count -eq 1) { return $found[0] }
  $script:step = 'Get-ClusterResource'
  $owner = Find-HvpClusterOwner $ref
  if ($Probe) { return $owner }
  if ($owner) {
    Stop-Hvp 'VmNotOnHost' ('the VM is not on this host; its cluster group is owned by {0}' -f $owner.node) @{ host = $owner.node; vmId = $owner.vmId }
  }
  Stop-Hvp 'VmNotFound' 'no such VM on this host' @{ cmdlet = 'Get-VM' }
}

function Get-HvpComputerSystem($vm) {
  $script:step = 'Msvm_ComputerSystem'
  # The id comes from Get-VM (a GUID), not from the caller.
  Get-CimInstance -Namespace $ns -ClassName Msvm_ComputerSystem -Filter ("Name='{0}'" -f ([string]$vm.Id))
}

# Waits for the Msvm_ConcreteJob of a method that returned 4096; throws on failure. A job that
# outlives its time is asked to terminate, not left running behind the error.
function Wait-HvpCimJob($r, [string]$method, [double]$timeoutSec = 0) {
  $script:step = $method
  $rv = [int]$r.ReturnValue
  if ($rv -eq 0) { return $null }
  if ($rv -ne 4096) { Fail-Hvp ('{0} returned {1}' -f $method, $rv) @{ cmdlet = 'Invoke-CimMethod'; method = $method; returnValue = $rv } }
  $job = $r.Job | Get-CimInstance
  if ($timeoutSec -le 0) { $timeoutSec = [double]$p.jobTimeoutSec }
  $deadline = (Get-Date).AddSeconds($timeoutSec)
  while ($job.JobState -in 2, 3, 4, 5, 6) {
    if ((Get-Date) -gt $deadline) {
      $terminate = $null
      try { $terminate = [int](Invoke-CimMethod -InputObject $job -MethodName RequestStateChange -Arguments @{ RequestedState = [uint16]4 }).ReturnValue } catch { }
      Fail-Hvp ('{0}: job still running after {1} s' -f $method, $timeoutSec) @{ cmdlet = 'Invoke-CimMethod'; method = $method; jobTimedOut = $true; terminateReturnValue = $terminate }
    }
    Start-Sleep -Milliseconds 500
    $job = $job | Get-CimInstance
  }
  if ($job.JobState -ne 7) {
    Fail-Hvp ('{0}: job ended in state {1}: {2}' -f $method, $job.JobState, $job.ErrorDescription) @{ cmdlet = 'Invoke-CimMethod'; method = $method; jobState = [int]$job.JobState; errorCode = [int]$job.ErrorCode }
  }
  return $job
}

# The record of what an unfinished checkpoint holds (checkpoint-record.ts), flushed to disk and
# moved into place before the VM is touched.
function Write-HvpRecord([string]$quiesced, [string]$checkpointId) {
  if (-not $p.recordPath) { return }
  $q = $null; if ($quiesced) { $q = $quiesced }
  $c = $null; if ($checkpointId) { $c = $checkpointId }
  $rec = @{ version = 1; label = [string]$p.label; quiesced = $q; checkpointId = $c; at = (Get-Date).ToUniversalTime().ToString('o') }
  $bytes = (New-Object System.Text.UTF8Encoding($false)).GetBytes((ConvertTo-Json -InputObject $rec -Compress))
  # recordPath is the \\?\ form on Windows (long paths): only .NET file calls, which keep it as given.
  $target = [string]$p.recordPath
  $tmp = $target + '.tmp'
  $fs = [IO.File]::Open($tmp, [IO.FileMode]::Create, [IO.FileAccess]::Write, [IO.FileShare]::None)
  try { $fs.Write($bytes, 0, $bytes.Length); $fs.Flush($true) } finally { $fs.Dispose() }
  if ([IO.File]::Exists($target)) { [IO.File]::Replace($tmp, $target, [NullString]::Value) } else { [IO.File]::Move($tmp, $target) }
}

# A Hyper-V Replica secondary (ReplicationMode Replica, or ExtendedReplica on the extended replica
# server): replication applies its log into its disks and it runs only after a failover, so it is
# backed up from the replica server as it is, never paused, saved, resumed or started by us.
function Test-HvpReplica($vm) {
  $mode = [string]$vm.ReplicationMode
  return ($mode -eq 'Replica' -or $mode -eq 'ExtendedReplica')
}

# What the replica holds: the replication state and time of the last applied replication, and its
# newest recovery point (Get-VMSnapshot -SnapshotType Replica / AppConsistentReplica), if any.
function Get-HvpReplicaState($vm) {
  $script:step = 'Get-VMReplication'
  $r = @(Get-VMReplication -VM $vm)[0]
  $latest = $null
  $script:step = 'Get-VMSnapshot'
  $points = @(@(Get-VMSnapshot -VM $vm -SnapshotType Replica -ErrorAction SilentlyContinue) + @(Get-VMSnapshot -VM $vm -SnapshotType AppConsistentReplica -ErrorAction SilentlyContinue) |
    Where-Object { $_ } | Sort-Object CreationTime)
  if ($points.Count -gt 0) {
    $l = $points[$points.Count - 1]
    $latest = @{ Id = [string]$l.Id; Name = [string]$l.Name; SnapshotType = [string]$l.SnapshotType; CreationTime = $l.CreationTime.ToUniversalTime().ToString('o') }
  }
  $last = $null
  if ($r.LastReplicationTime) { $last = ([datetime]$r.LastReplicationTime).ToUniversalTime().ToString('o') }
  @{ Mode = [string]$vm.ReplicationMode; State = [string]$r.State; Health = [string]$r.Health; PrimaryServer = [string]$r.PrimaryServer
    ReplicaServer = [string]$r.ReplicaServer; LastReplicationTime = $last; LatestRecoveryPoint = $latest }
}

# Resumes the VM only when our record says we quieted it that way ($held) and it is still so: a VM
# an administrator paused or saved is left as it is, and a replica is never resumed or started.
function Resume-HvpHeld($vm, [string]$held) {
  if (Test-HvpReplica $vm) { return $null }
  $state = [string](Get-VM -Id $vm.Id).State
  if ($held -eq 'pause' -and $state -eq 'Paused') { $script:step = 'Resume-VM'; Resume-VM -VM $vm; return 'Resume-VM' }
  if ($held -eq 'save' -and $state -eq 'Saved') { $script:step = 'Start-VM'; Start-VM -VM $vm; return 'Start-VM' }
  return $null
}

function Format-HvpReferencePoint($rp) {
  @{
    InstanceID = [string]$rp.InstanceID
    ReferencePointType = [int]$rp.ReferencePointType
    ConsistencyLevel = [int]$rp.ConsistencyLevel
    VirtualSystemIdentifier = [string]$rp.VirtualSystemIdentifier
    VirtualDiskIdentifiers = @($rp.VirtualDiskIdentifiers)
    ResilientChangeTrackingIdentifiers = @($rp.ResilientChangeTrackingIdentifiers)
  }
}

function Get-HvpReferencePoints($cs) {
  $script:step = 'Msvm_VirtualSystemReferencePoint'
  @(Get-CimAssociatedInstance -InputObject $cs -ResultClassName Msvm_VirtualSystemReferencePoint -Association Msvm_ReferencePointOfVirtualSystem)
}

# The VM's virtual hard disks as WMI sees them (Msvm_StorageAllocationSettingData of the active
# settings): reference points name disks by these InstanceIDs; HostResource[0] is the file.
function Get-HvpDiskInstances($cs) {
  $script:step = 'Msvm_StorageAllocationSettingData'
  $vssd = Get-CimAssociatedInstance -InputObject $cs -ResultClassName Msvm_VirtualSystemSettingData -Association Msvm_SettingsDefineState
  @(Get-CimAssociatedInstance -InputObject $vssd -ResultClassName Msvm_StorageAllocationSettingData |
    Where-Object { $_.ResourceSubType -eq 'Microsoft:Hyper-V:Virtual Hard Disk' } |
    ForEach-Object { @{ InstanceID = [string]$_.InstanceID; Path = [string]@($_.HostResource)[0] } })
}

function Format-HvpDrive($d) {
  @{
    ControllerType = [string]$d.ControllerType
    ControllerNumber = [int]$d.ControllerNumber
    ControllerLocation = [int]$d.ControllerLocation
    Path = [string]$d.Path
    DiskNumber = $d.DiskNumber
  }
}

# Recovery checkpoints are listed only when asked for by type, so ask for both.
function Get-HvpSnapshots($vm) {
  $script:step = 'Get-VMSnapshot'
  $all = @(Get-VMSnapshot -VM $vm) + @(Get-VMSnapshot -VM $vm -SnapshotType Recovery)
  $seen = @{}
  foreach ($s in $all) { if (-not $seen.ContainsKey([string]$s.Id)) { $seen[[string]$s.Id] = $s } }
  @($seen.Values)
}

# The RCT state a disk file itself holds (virtdisk.dll GetVirtualDiskInformation with
# GET_VIRTUAL_DISK_INFO_CHANGE_TRACKING_STATE = 15): whether tracking is on, whether the file has
# changes newer than its most recent id, and that id. The buffer: Version at 0, the union at 8
# (Enabled, NewerChanges, then MostRecentId as a NUL-terminated UTF-16 string at 16).
function Get-HvpRctState([string]$path) {
  if (-not ('HvpVirtDisk' -as [type])) {
    Add-Type -TypeDefinition @'
using System;
using System.ComponentModel;
using System.Runtime.InteropServices;
public static class HvpVirtDisk {
  [StructLayout(LayoutKind.Sequential)] struct StorageType { public uint DeviceId; public Guid VendorId; }
  [StructLayout(LayoutKind.Sequential)] struct OpenParameters2 { public int Version; public int GetInfoOnly; public int ReadOnly; public Guid ResiliencyGuid; }
  [DllImport("virtdisk.dll", CharSet = CharSet.Unicode)]
  static extern int OpenVirtualDisk(ref StorageType type, string path, int accessMask, int flags, ref OpenParameters2 parameters, out IntPtr handle);
  [DllImport("virtdisk.dll")]
  static extern int GetVirtualDiskInformation(IntPtr handle, ref int size, IntPtr info, IntPtr sizeUsed);
  [DllImport("kernel32.dll")]
  static extern bool CloseHandle(IntPtr handle);
  public static object[] ChangeTrackingState(string path) {
    StorageType type = new StorageType();
    type.VendorId = new Guid("ec984aec-a0f9-47e9-901f-71415a66345b");
    OpenParameters2 open = new OpenParameters2();
    open.Version = 2; open.GetInfoOnly = 1; open.ReadOnly = 1;
    IntPtr handle;
    int rc = OpenVirtualDisk(ref type, path, 0, 0, ref open, out handle);
    if (rc != 0) throw new Win32Exception(rc, "OpenVirtualDisk " + path);
    try {
      int size = 1024;
      for (int attempt = 0; attempt < 4; attempt++) {
        IntPtr buffer = Marshal.AllocHGlobal(size);
        try {
          for (int i = 0; i < size; i++) Marshal.WriteByte(buffer, i, 0);
          Marshal.WriteInt32(buffer, 0, 15);
          rc = GetVirtualDiskInformation(handle, ref size, buffer, IntPtr.Zero);
          if (rc == 122) continue;
          if (rc != 0) throw new Win32Exception(rc, "GetVirtualDiskInformation " + path);
          return new object[] { Marshal.ReadInt32(buffer, 8) != 0, Marshal.ReadInt32(buffer, 12) != 0, Marshal.PtrToStringUni(IntPtr.Add(buffer, 16)) };
        } finally { Marshal.FreeHGlobal(buffer); }
      }
      throw new Win32Exception(122, "GetVirtualDiskInformation " + path);
    } finally { CloseHandle(handle); }
  }
}
'@
  }
  $r = [HvpVirtDisk]::ChangeTrackingState($path)
  @{ Enabled = [bool]$r[0]; NewerChanges = [bool]$r[1]; MostRecentId = [string]$r[2] }
}

# The disks of a checkpoint: Get-VMHardDiskDrive -VMSnapshot names the files the checkpoint froze;
# each file's own most recent RCT id is the change-tracking id of this point.
function Get-HvpCheckpointDisks($snapshot) {
  $script:step = 'Get-VMHardDiskDrive'
  @(Get-VMHardDiskDrive -VMSnapshot $snapshot | ForEach-Object {
    $d = Format-HvpDrive $_
    if ($d.Path -and $null -eq $d.DiskNumber) {
      $script:step = 'Get-VHD'
      $v = Get-VHD -LiteralPath $d.Path
      $d.Size = [uint64]$v.Size
      $d.VhdType = [string]$v.VhdType
      $d.VhdFormat = [string]$v.VhdFormat
      $d.ParentPath = [string]$v.ParentPath
      # The VHDX's virtual disk id (its header's identity): a replaced disk has another one.
      $d.DiskIdentifier = [string]$v.DiskIdentifier
      $script:step = 'GetVirtualDiskInformation'
      try { $d.Rct = Get-HvpRctState $d.Path } catch { $d.Rct = @{ Error = $_.Exception.Message } }
    }
    $d
  })
}
`;

const MAIN_OPEN = String.raw`
try {
`;

const MAIN_CLOSE = String.raw`
} catch {
  $err = $_
  $extra = @{ category = [string]$err.CategoryInfo.Category; errorId = [string]$err.FullyQualifiedErrorId }
  # The cmdlet that threw; for our own throws (Fail-Hvp and friends) the step we were in.
  $extra.cmdlet = $script:step
  if ($err.InvocationInfo -and $err.InvocationInfo.MyCommand) {
    $name = [string]$err.InvocationInfo.MyCommand.Name
    if ($name -and $name -notlike '*-Hvp*') { $extra.cmdlet = $name }
  }
  if ($script:failure) { foreach ($k in $script:failure.Keys) { $extra[$k] = $script:failure[$k] } }
  if (Get-Variable -Name trace -Scope Script -ErrorAction SilentlyContinue) { $extra.trace = @($script:trace) }
  Stop-Hvp 'HypervisorCommandFailed' $err.Exception.Message $extra
}
`;

const BODIES: Record<ScriptOp, string> = {
  list: String.raw`
  $script:step = 'Get-VM'
  $vms = @(Get-VM)
  $cluster = $null
  if (@($vms | Where-Object { $_.IsClustered }).Count -gt 0) {
    $script:step = 'Get-Cluster'
    try { $cluster = [string](Get-Cluster).Name } catch { }
  }
  $out = @($vms | ForEach-Object { @{ Id = [string]$_.Id; Name = [string]$_.Name; State = [string]$_.State; IsClustered = [bool]$_.IsClustered; ComputerName = [string]$_.ComputerName } })
  Write-HvpResult @{ host = $env:COMPUTERNAME; cluster = $cluster; vms = $out }
`,

  locate: String.raw`
  $found = Find-HvpVm ([string]$p.vm) -Probe
  if ($found -and $found.Id) { Write-HvpResult @{ onHost = $true; vmId = [string]$found.Id } }
  elseif ($found) { Write-HvpResult @{ onHost = $false; ownerNode = $found.node; vmId = $found.vmId } }
  else { Write-HvpResult @{ onHost = $false } }
`,

  inspect: String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $id = [string]$vm.Id
  $cs = Get-HvpComputerSystem $vm

  $script:step = 'Get-VMIntegrationService'
  $is = @(Get-VMIntegrationService -VM $vm | ForEach-Object {
    @{ Id = [string]$_.Id; Name = [string]$_.Name; Enabled = [bool]$_.Enabled; PrimaryStatusDescription = [string]$_.PrimaryStatusDescription; PrimaryOperationalStatus = [string]$_.PrimaryOperationalStatus }
  })

  $script:step = 'Get-VMHardDiskDrive'
  $disks = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object {
    $d = Format-HvpDrive $_
    $d.Chain = @()
    # A passthrough disk has DiskNumber set and a description instead of a file in Path.
    if ($d.Path -and $null -eq $d.DiskNumber) {
      $script:step = 'Get-VHD'
      try {
        $path = $d.Path
        for ($i = 0; $i -lt 64 -and $path; $i++) {
          $v = Get-VHD -LiteralPath $path
          $d.Chain += @{ Path = [string]$v.Path; VhdType = [string]$v.VhdType; VhdFormat = [string]$v.VhdFormat; Size = [uint64]$v.Size; FileSize = [uint64]$v.FileSize; ParentPath = [string]$v.ParentPath }
          # Follow checkpoint files (.avhdx) down to the disk that holds the data.
          if ($v.ParentPath -and ($path -match '\.avhdx?$')) { $path = [string]$v.ParentPath } else { $path = $null }
        }
      } catch { $d.VhdError = $_.Exception.Message }
    }
    $d
  })

  $script:step = 'Msvm_KvpExchangeComponent'
  $kvp = @{}
  try {
    $kc = Get-CimAssociatedInstance -InputObject $cs -ResultClassName Msvm_KvpExchangeComponent
    foreach ($item in @($kc.GuestIntrinsicExchangeItems)) {
      if (-not $item) { continue }
      $x = [xml]$item
      $n = $x.SelectSingleNode("/INSTANCE/PROPERTY[@NAME='Name']/VALUE")
      $v = $x.SelectSingleNode("/INSTANCE/PROPERTY[@NAME='Data']/VALUE")
      if ($n -and $v) { $kvp[$n.InnerText] = $v.InnerText }
    }
  } catch { $kvp['_error'] = $_.Exception.Message }

  $cluster = $null
  if ($vm.IsClustered) {
    $script:step = 'Get-ClusterResource'
    $res = @(Get-ClusterResource | Where-Object { [string]$_.ResourceType -eq 'Virtual Machine' } |
      Where-Object { [string](Get-ClusterParameter -InputObject $_ -Name VmID).Value -eq $id })
    if ($res.Count -ge 1) {
      $script:step = 'Get-ClusterGroup'
      $g = Get-ClusterGroup -Name ([string]$res[0].OwnerGroup)
      $cluster = @{ Name = [string](Get-Cluster).Name; GroupName = [string]$g.Name; GroupState = [string]$g.State; OwnerNode = [string]$g.OwnerNode; Nodes = @(Get-ClusterNode | ForEach-Object { [string]$_.Name }) }
    }
  }

  $repl = @{ Mode = [string]$vm.ReplicationMode }
  if ($repl.Mode -and $repl.Mode -ne 'None') {
    $script:step = 'Get-VMReplication'
    try {
      $r = @(Get-VMReplication -VM $vm)[0]
      $repl.PrimaryServer = [string]$r.PrimaryServer
      $repl.ReplicaServer = [string]$r.ReplicaServer
      $repl.State = [string]$r.State
    } catch { $repl.Error = $_.Exception.Message }
  }

  $snaps = @(Get-HvpSnapshots $vm | ForEach-Object {
    @{ Id = [string]$_.Id; Name = [string]$_.Name; SnapshotType = [string]$_.SnapshotType; CreationTime = $_.CreationTime.ToUniversalTime().ToString('o') }
  })
  $rps = @(Get-HvpReferencePoints $cs | ForEach-Object { Format-HvpReferencePoint $_ })
  $diskInstances = Get-HvpDiskInstances $cs

  Write-HvpResult @{
    host = $env:COMPUTERNAME
    vm = @{ Id = $id; Name = [string]$vm.Name; State = [string]$vm.State; IsClustered = [bool]$vm.IsClustered; ComputerName = [string]$vm.ComputerName
      Generation = [int]$vm.Generation; Version = [string]$vm.Version; ProcessorCount = [int]$vm.ProcessorCount; MemoryStartup = [uint64]$vm.MemoryStartup
      Path = [string]$vm.Path; ConfigurationLocation = [string]$vm.ConfigurationLocation; ReplicationMode = [string]$vm.ReplicationMode }
    integrationServices = $is; disks = $disks; kvp = $kvp; cluster = $cluster; replication = $repl
    snapshots = $snaps; referencePoints = $rps; diskInstances = $diskInstances
  }
`,

  'create-checkpoint': String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $cs = Get-HvpComputerSystem $vm
  $script:step = 'Msvm_VirtualSystemSnapshotService'
  $svc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotService
  $isReplica = Test-HvpReplica $vm
  $replica = $null
  if ($isReplica) {
    # A replica is read as replication left it: no guest runs to quiesce (crash-consistent), nothing
    # is paused or saved, and a replica whose data is incomplete (initial replication or a
    # resynchronization not finished) has nothing whole to back up yet.
    $replica = Get-HvpReplicaState $vm
    if (@('ReadyForInitialReplication', 'WaitingForInitialReplication', 'InitialReplicationInProgress', 'WaitingForStartResynchronize', 'Resynchronizing', 'ResynchronizeSuspended') -contains $replica.State) {
      Fail-Hvp ('the replica VM has no complete replicated data (replication state {0}); back it up once replication is Replicating' -f $replica.State) @{ replicationState = $replica.State }
    }
  }
  $script:step = 'Msvm_VirtualSystemSnapshotSettingData'
  $settingsClass = Get-CimClass -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotSettingData
  $level = [byte]$p.consistencyLevel
  if ($isReplica) { $level = [byte]2 }
  $props = @{ ConsistencyLevel = $level; IgnoreNonSnapshottableDisks = $true }
  # GuestBackupType (1 Full: guest applications truncate their logs, 2 Copy: they do not) exists
  # from Windows Server 2016 version 1703 on; older hosts do what their VSS requester defaults to.
  $guestBackupTypeSet = $false
  if (-not $isReplica -and [int]$p.guestBackupType -gt 0 -and @($settingsClass.CimClassProperties | ForEach-Object { $_.Name }) -contains 'GuestBackupType') {
    $props.GuestBackupType = [byte]$p.guestBackupType; $guestBackupTypeSet = $true
  }
  $settings = $settingsClass | New-CimInstance -ClientOnly -Property $props
  $ser = [Microsoft.Management.Infrastructure.Serialization.CimSerializer]::Create()
  $embedded = [Text.Encoding]::Unicode.GetString($ser.Serialize($settings, [Microsoft.Management.Infrastructure.Serialization.InstanceSerializationOptions]::None))
  $script:trace = New-Object System.Collections.ArrayList
  function Add-HvpTrace([string]$s) { [void]$script:trace.Add(@{ step = $s; at = (Get-Date).ToUniversalTime().ToString('o') }) }
  # 'pause' or 'save' when our record says an earlier attempt quieted this VM and never resumed it.
  $held = [string]$p.heldQuiet

  # Idempotent by label: a retried request finds the checkpoint its first attempt made, by its label,
  # or by the id in our record when that attempt did not live to rename it.
  if ($p.label) {
    $existing = @(Get-HvpSnapshots $vm | Where-Object { [string]$_.SnapshotType -eq 'Recovery' -and [string]$_.Name -eq [string]$p.label })[0]
    if (-not $existing -and $p.recordCheckpointId) {
      $recorded = ([guid][string]$p.recordCheckpointId).ToString()
      $existing = @(Get-HvpSnapshots $vm | Where-Object { [string]$_.SnapshotType -eq 'Recovery' -and [string]$_.Id -eq $recorded })[0]
      if ($existing) { $script:step = 'Rename-VMSnapshot'; Rename-VMSnapshot -VMSnapshot $existing -NewName ([string]$p.label) }
    }
    if ($existing) {
      $resumed = Resume-HvpHeld $vm $held
      if ($resumed) { Add-HvpTrace 'resumed' }
      Write-HvpResult @{
        vmId = [string]$vm.Id; host = $env:COMPUTERNAME; snapshotInstanceId = 'Microsoft:' + [string]$existing.Id; reused = $true
        creationTime = $existing.CreationTime.ToUniversalTime().ToString('o'); stateBefore = [string]$vm.State; quiesced = $null; resumed = $resumed
        trace = @($script:trace); disks = @(Get-HvpCheckpointDisks $existing); replica = $replica }
      return
    }
  }

  $stateBefore = [string]$vm.State
  $quiesced = $null
  if (($held -eq 'pause' -and $stateBefore -eq 'Paused') -or ($held -eq 'save' -and $stateBefore -eq 'Saved')) { $quiesced = $held; Add-HvpTrace 'held' }
  $snap = $null
  $primary = $null
  try {
    # Offline: make the VM quiet, take the checkpoint, bring it back at once (below).
    if (-not $isReplica -and -not $quiesced -and $p.mode -eq 'offline' -and $stateBefore -eq 'Running' -and ($p.offlineMethod -eq 'save' -or $p.offlineMethod -eq 'pause')) {
      $script:step = 'record'
      Write-HvpRecord ([string]$p.offlineMethod) ''
      if ($p.offlineMethod -eq 'pause') {
        $script:step = 'Suspend-VM'; Add-HvpTrace 'Suspend-VM'; Suspend-VM -VM $vm; $quiesced = 'pause'
      } else {
        $script:step = 'Save-VM'; Add-HvpTrace 'Save-VM'; Save-VM -VM $vm; $quiesced = 'save'
      }
      Add-HvpTrace 'quiesced'
    }
    $script:step = 'CreateSnapshot'
    Add-HvpTrace 'CreateSnapshot'
    $r = Invoke-CimMethod -InputObject $svc -MethodName CreateSnapshot -Arguments @{
      AffectedSystem = $cs; SnapshotSettings = $embedded; SnapshotType = [uint16]32768 }
    # A quiet VM waits for this job: its own, shorter limit.
    $limit = 0
    if ($quiesced) { $limit = [double]$p.quiescedJobTimeoutSec }
    $job = Wait-HvpCimJob $r 'CreateSnapshot' $limit
    if ($job) { $snap = @(Get-CimAssociatedInstance -InputObject $job -ResultClassName Msvm_VirtualSystemSettingData)[0] }
    if (-not $snap -and $r.ResultingSnapshot) { $snap = $r.ResultingSnapshot | Get-CimInstance }
    if (-not $snap) { Fail-Hvp 'CreateSnapshot finished but named no snapshot' @{ method = 'CreateSnapshot' } }
    Add-HvpTrace 'snapshot-created'
    if ($p.label) { $script:step = 'record'; Write-HvpRecord ([string]$quiesced) (([string]$snap.InstanceID) -replace '^Microsoft:', '') }
  } catch {
    $primary = $_
    $primaryStep = $script:step
  }
  # Resumed here, not in a finally: an error while resuming must not hide the error that came first.
  $resumeError = $null
  if ($quiesced) {
    try {
      if ($quiesced -eq 'pause') { $script:step = 'Resume-VM'; Add-HvpTrace 'Resume-VM'; Resume-VM -VM $vm }
      else { $script:step = 'Start-VM'; Add-HvpTrace 'Start-VM'; Start-VM -VM $vm }
      Add-HvpTrace 'resumed'
    } catch { $resumeError = $_.Exception.Message }
  }
  if ($primary) {
    $script:step = $primaryStep
    if ($resumeError) { if (-not $script:failure) { $script:failure = @{} }; $script:failure.resumeError = $resumeError }
    throw $primary
  }
  if ($resumeError) { Fail-Hvp ('the checkpoint was taken but the VM could not be resumed: {0}' -f $resumeError) @{ resumeError = $resumeError } }

  $snapId = ([string]$snap.InstanceID) -replace '^Microsoft:', ''
  $script:step = 'Get-VMSnapshot'
  $vs = @(Get-HvpSnapshots $vm | Where-Object { [string]$_.Id -eq $snapId })[0]
  if (-not $vs) { Fail-Hvp ('snapshot {0} was created but Get-VMSnapshot does not list it' -f $snapId) @{ } }
  if ($p.label) {
    $script:step = 'Rename-VMSnapshot'
    try { Rename-VMSnapshot -VMSnapshot $vs -NewName ([string]$p.label) }
    catch {
      # A checkpoint without its label is found by no retry and no release: remove it and fail.
      $renameError = $_.Exception.Message
      $script:step = 'DestroySnapshot'
      $d = Invoke-CimMethod -InputObject $svc -MethodName DestroySnapshot -Arguments @{ AffectedSnapshot = $snap }
      $null = Wait-HvpCimJob $d 'DestroySnapshot'
      $script:step = 'Rename-VMSnapshot'
      Fail-Hvp ('the recovery checkpoint could not be named {0} and was removed: {1}' -f $p.label, $renameError) @{ labelError = $renameError; checkpointRemoved = $true }
    }
  }
  Write-HvpResult @{
    vmId = [string]$vm.Id; host = $env:COMPUTERNAME; snapshotInstanceId = [string]$snap.InstanceID
    virtualSystemType = [string]$snap.VirtualSystemType; creationTime = $vs.CreationTime.ToUniversalTime().ToString('o')
    stateBefore = $stateBefore; quiesced = $quiesced; trace = @($script:trace); disks = @(Get-HvpCheckpointDisks $vs)
    reused = $false; consistencyLevel = [int]$level; guestBackupTypeSet = $guestBackupTypeSet; replica = $replica
  }
`,

  'describe-checkpoint': String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $ckpt = ([guid][string]$p.checkpointId).ToString()
  $vs = @(Get-HvpSnapshots $vm | Where-Object { [string]$_.Id -eq $ckpt })[0]
  if (-not $vs) { Stop-Hvp 'CheckpointNotFound' ('checkpoint {0} does not exist' -f $ckpt) @{ cmdlet = 'Get-VMSnapshot' } }
  Write-HvpResult @{ vmId = [string]$vm.Id; checkpointId = $ckpt; snapshotType = [string]$vs.SnapshotType; disks = @(Get-HvpCheckpointDisks $vs) }
`,

  'disk-changes': String.raw`
  $script:step = 'Msvm_ImageManagementService'
  $ims = Get-CimInstance -Namespace $ns -ClassName Msvm_ImageManagementService
  $pages = New-Object System.Collections.ArrayList
  $off = [uint64]$p.offset
  $end = $off + [uint64]$p.length
  $failed = $null
  try {
    # GetVirtualDiskChanges may process less than asked (ProcessedByteLength): continue from there.
    for ($i = 0; $i -lt [int]$p.maxCalls -and $off -lt $end; $i++) {
      $len = [uint64][math]::Min([double]($end - $off), [double]$p.maxQueryBytes)
      $script:step = 'GetVirtualDiskChanges'
      $r = Invoke-CimMethod -InputObject $ims -MethodName GetVirtualDiskChanges -Arguments @{
        Path = [string]$p.path; LimitId = [string]$p.limitId; ByteOffset = $off; ByteLength = $len }
      $null = Wait-HvpCimJob $r 'GetVirtualDiskChanges'
      $done = [uint64]$r.ProcessedByteLength
      [void]$pages.Add(@{ ByteOffset = $off; ByteLength = $len; ProcessedByteLength = $done
        ChangedByteOffsets = @($r.ChangedByteOffsets); ChangedByteLengths = @($r.ChangedByteLengths) })
      if ($done -eq 0) { break }
      $off += $done
    }
  } catch {
    # An unknown or reset RCT id fails here: the caller reads everything instead.
    $failed = @{ message = $_.Exception.Message; details = $script:failure }
  }
  Write-HvpResult @{ pages = @($pages); failed = $failed }
`,

  'release-checkpoint': String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $cs = Get-HvpComputerSystem $vm
  $ckpt = ([guid][string]$p.checkpointId).ToString()
  $script:step = 'Msvm_VirtualSystemSettingData'
  $snap = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSettingData -Filter ("InstanceID='Microsoft:{0}'" -f $ckpt)
  $state = [string]$vm.State
  if (-not $snap) {
    $resumed = Resume-HvpHeld $vm ([string]$p.heldQuiet)
    Write-HvpResult @{ vmId = [string]$vm.Id; alreadyReleased = $true; state = $state; resumed = $resumed }
    return
  }
  if ([string]$snap.VirtualSystemType -ne 'Microsoft:Hyper-V:Snapshot:Recovery') {
    Fail-Hvp ('checkpoint {0} is a {1}, not a recovery checkpoint; it is not ours to release' -f $ckpt, $snap.VirtualSystemType) @{ }
  }
  # A pause or save our interrupted offline checkpoint left (our record says so) ends here; no other.
  $resumed = Resume-HvpHeld $vm ([string]$p.heldQuiet)
  $script:step = 'Msvm_VirtualSystemSnapshotService'
  $svc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemSnapshotService
  $script:step = 'ConvertToReferencePoint'
  $r = Invoke-CimMethod -InputObject $svc -MethodName ConvertToReferencePoint -Arguments @{ AffectedSnapshot = $snap }
  $job = Wait-HvpCimJob $r 'ConvertToReferencePoint'
  $rp = $null
  if ($job) { $rp = @(Get-CimAssociatedInstance -InputObject $job -ResultClassName Msvm_VirtualSystemReferencePoint)[0] }
  if (-not $rp -and $r.ResultingReferencePoint) { $rp = $r.ResultingReferencePoint | Get-CimInstance }
  $rpOut = $null
  if ($rp) { $rpOut = Format-HvpReferencePoint $rp }
  # After the merge: disk instances (stable ids) and drives both name the base files now.
  $diskInstances = Get-HvpDiskInstances $cs
  $script:step = 'Get-VMHardDiskDrive'
  $drives = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { Format-HvpDrive $_ })
  Write-HvpResult @{ vmId = [string]$vm.Id; alreadyReleased = $false; state = $state; resumed = $resumed
    referencePoint = $rpOut; diskInstances = $diskInstances; drives = $drives }
`,

  'destroy-reference-point': String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $cs = Get-HvpComputerSystem $vm
  $rp = @(Get-HvpReferencePoints $cs | Where-Object { [string]$_.InstanceID -eq [string]$p.referencePointId })[0]
  if (-not $rp) { Write-HvpResult @{ alreadyGone = $true }; return }
  $script:step = 'Msvm_VirtualSystemReferencePointService'
  $svc = Get-CimInstance -Namespace $ns -ClassName Msvm_VirtualSystemReferencePointService
  $script:step = 'DestroyReferencePoint'
  $r = Invoke-CimMethod -InputObject $svc -MethodName DestroyReferencePoint -Arguments @{ AffectedReferencePoint = $rp }
  $null = Wait-HvpCimJob $r 'DestroyReferencePoint'
  Write-HvpResult @{ alreadyGone = $false }
`,

  'list-reference-points': String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $cs = Get-HvpComputerSystem $vm
  $rps = @(Get-HvpReferencePoints $cs | ForEach-Object { Format-HvpReferencePoint $_ })
  $script:step = 'Get-VMHardDiskDrive'
  $drives = @(Get-VMHardDiskDrive -VM $vm | ForEach-Object { Format-HvpDrive $_ })
  Write-HvpResult @{ vmId = [string]$vm.Id; referencePoints = $rps; diskInstances = (Get-HvpDiskInstances $cs); drives = $drives }
`,

  'checkpoints-by-label': String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $ids = @(Get-HvpSnapshots $vm | Where-Object { [string]$_.SnapshotType -eq 'Recovery' -and [string]$_.Name -eq [string]$p.label } | ForEach-Object { [string]$_.Id })
  Write-HvpResult @{ vmId = [string]$vm.Id; checkpointIds = $ids }
`,

  power: String.raw`
  $vm = Find-HvpVm ([string]$p.vm)
  $before = [string]$vm.State
  if ([string]$p.action -ne 'resume-held' -and (Test-HvpReplica $vm)) {
    Fail-Hvp 'the VM is a Hyper-V Replica secondary: hvprotect never pauses, saves, resumes or starts it (replication applies to it; it runs after a failover)' @{ cmdlet = 'Get-VM'; replica = $true }
  }
  switch ([string]$p.action) {
    'pause' {
      if ($before -eq 'Running') { $script:step = 'Suspend-VM'; Suspend-VM -VM $vm }
      elseif ($before -ne 'Paused') { Fail-Hvp ('cannot pause a VM that is {0}' -f $before) @{ cmdlet = 'Suspend-VM' } }
    }
    'save' {
      if ($before -eq 'Running' -or $before -eq 'Paused') { $script:step = 'Save-VM'; Save-VM -VM $vm }
      elseif ($before -ne 'Saved') { Fail-Hvp ('cannot save a VM that is {0}' -f $before) @{ cmdlet = 'Save-VM' } }
    }
    'resume-held' { $null = Resume-HvpHeld $vm ([string]$p.held) }
    'resume' {
      if ($before -eq 'Paused') { $script:step = 'Resume-VM'; Resume-VM -VM $vm }
      elseif ($before -eq 'Saved') { $script:step = 'Start-VM'; Start-VM -VM $vm }
      elseif ($before -ne 'Running') { Fail-Hvp ('cannot resume a VM that is {0}' -f $before) @{ cmdlet = 'Resume-VM' } }
    }
    default { Fail-Hvp 'unknown power action' @{ } }
  }
  $script:step = 'Get-VM'
  Write-HvpResult @{ vmId = [string]$vm.Id; before = $before; after = [string](Get-VM -Id $vm.Id).State }
`,
};

/** The full script for `op`; `params` reach it only as base64 JSON (`$p`). */
export function buildScript(op: ScriptOp, params: Record<string, unknown>): string {
  // Base64 cannot contain "'", so the literal cannot be closed early; replace() with a function
  // so that "$" sequences in the payload are not treated as replacement patterns.
  const preamble = PREAMBLE.replace('__PARAMS__', () => encodeParams(params));
  return `# hvprotect-op: ${op}\n${preamble}${MAIN_OPEN}${BODIES[op]}${MAIN_CLOSE}`;
}

/** Every operation that has a script. */
export const SCRIPT_OPS = Object.keys(BODIES) as ScriptOp[];
