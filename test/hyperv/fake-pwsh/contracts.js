// What every script of an operation must (and must not) say, checked by the fake pwsh on every call,
// whatever the scenario step declares. These are the behaviours a wrong edit would break silently
// on a real host: resume only a VM our record holds, find checkpoints by exact label among recovery
// checkpoints only, never let a name be a wildcard.
'use strict';

const LABEL_FILTER = /Where-Object \{ \[string\]\$_\.SnapshotType -eq 'Recovery' -and \[string\]\$_\.Name -eq \[string\]\$p\.label \}/;
const NO_LABEL_WILDCARD = /(-like|-match|-clike|-ilike)[^\n]*\$p\.label|\$p\.label[^\n]*(-like|-match)|Get-VMSnapshot[^\n]*-Name/;

const PREAMBLE = [
  { must: /\$found = @\(Get-VM \| Where-Object \{ \$_\.Name -eq \$ref \}\)/, why: 'VMs are matched by exact name (Get-VM -Name takes wildcards)' },
  {
    must: /function Resume-HvpHeld\(\$vm, \[string\]\$held\) \{\n  if \(Test-HvpReplica \$vm\) \{ return \$null \}\n  \$state = \[string\]\(Get-VM -Id \$vm\.Id\)\.State\n  if \(\$held -eq 'pause' -and \$state -eq 'Paused'\) \{ \$script:step = 'Resume-VM'; Resume-VM -VM \$vm; return 'Resume-VM' \}\n  if \(\$held -eq 'save' -and \$state -eq 'Saved'\) \{ \$script:step = 'Start-VM'; Start-VM -VM \$vm; return 'Start-VM' \}\n  return \$null\n\}/,
    why: 'Resume-HvpHeld resumes a paused VM and starts a saved one only as our record holds it, and never a replica',
  },
  { mustNot: /Get-VHD -Path /, why: 'Get-VHD -Path takes wildcards ([ ] in a path): -LiteralPath' },
  { must: /while \(\$job\.JobState -in 2, 3, 4, 5, 6\)/, why: 'a job in state 2 (New) is waited for, not failed' },
  { must: /-MethodName RequestStateChange -Arguments @\{ RequestedState = \[uint16\]4 \}/, why: 'a job that outlives its time is asked to terminate' },
];

const BODY = {
  'release-checkpoint': [
    { must: /if \(-not \$snap\) \{\n    \$resumed = Resume-HvpHeld \$vm \(\[string\]\$p\.heldQuiet\)/, why: 'release of a gone checkpoint resumes a VM our record holds' },
    { must: /\n  \$resumed = Resume-HvpHeld \$vm \(\[string\]\$p\.heldQuiet\)\n[\s\S]*-MethodName ConvertToReferencePoint/, why: 'release resumes a VM our record holds before converting' },
    { mustNot: /Resume-VM|Start-VM/, why: 'release touches the VM only through Resume-HvpHeld' },
    { must: /if \(\[string\]\$snap\.VirtualSystemType -ne 'Microsoft:Hyper-V:Snapshot:Recovery'\)/, why: 'only recovery checkpoints are released' },
  ],
  'checkpoints-by-label': [
    { must: LABEL_FILTER, why: 'checkpoints by label: recovery checkpoints named exactly so' },
    { mustNot: NO_LABEL_WILDCARD, why: 'a label is never a wildcard pattern' },
  ],
  'create-checkpoint': [
    { must: LABEL_FILTER, why: 'label reuse: recovery checkpoints named exactly so' },
    { mustNot: NO_LABEL_WILDCARD, why: 'a label is never a wildcard pattern' },
    { must: /\$resumed = Resume-HvpHeld \$vm \$held/, why: 'a reused checkpoint resumes a VM our record holds' },
    { must: /Write-HvpRecord \(\[string\]\$p\.offlineMethod\) ''\n[\s\S]*Suspend-VM -VM \$vm/, why: 'the record is written before the VM is paused' },
    { mustNot: /\} finally \{\n    if \(\$quiesced/, why: 'resume is not in a finally (an error there would hide the first one)' },
    { must: /-MethodName DestroySnapshot/, why: 'a checkpoint whose label cannot be set is removed' },
    { must: /if \(-not \$isReplica -and -not \$quiesced -and \$p\.mode -eq 'offline'/, why: 'a replica is never paused or saved for its checkpoint' },
    { must: /if \(\$isReplica\) \{ \$level = \[byte\]2 \}/, why: 'a replica checkpoint is crash-consistent (no guest runs to quiesce)' },
  ],
  power: [
    { must: /'resume-held' \{ \$null = Resume-HvpHeld \$vm \(\[string\]\$p\.held\) \}/, why: 'resume-held goes through Resume-HvpHeld' },
    { must: /if \(\[string\]\$p\.action -ne 'resume-held' -and \(Test-HvpReplica \$vm\)\) \{\n    Fail-Hvp /, why: 'a replica is never paused, saved, resumed or started' },
  ],
};

function stripComments(text) {
  return text
    .split('\n')
    .filter((l) => !l.trim().startsWith('#'))
    .join('\n');
}

/** Violations of the contracts by the script of `op` (empty when it keeps them). */
function violations(op, script) {
  const code = stripComments(script);
  const open = code.indexOf('\ntry {\n');
  const close = code.lastIndexOf('\n} catch {\n  $err = $_');
  if (open < 0 || close < 0) return ['script has no main try/catch'];
  const preamble = code.slice(0, open);
  const body = code.slice(open, close);
  const out = [];
  for (const c of PREAMBLE) {
    if (c.must && !c.must.test(preamble)) out.push(c.why);
    if (c.mustNot && (c.mustNot.test(preamble) || c.mustNot.test(body))) out.push(c.why);
  }
  for (const c of BODY[op] || []) {
    if (c.must && !c.must.test(body)) out.push(c.why);
    if (c.mustNot && c.mustNot.test(body)) out.push(c.why);
  }
  return out;
}

module.exports = { violations };
