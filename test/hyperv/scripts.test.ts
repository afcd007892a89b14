// The generated PowerShell, read as code: every script parses with a PowerShell grammar
// (tree-sitter-powershell, the grammar's own WebAssembly build), and the contracts the fake pwsh
// holds every call to reject the edits that would hurt on a real host.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Language, Parser, type Node } from 'web-tree-sitter';
import { SCRIPT_OPS, buildScript } from '../../hypervisor/hyperv/scripts';
import { CheckpointRecords, scriptFilePath } from '../../hypervisor/hyperv/checkpoint-record';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { violations } = require('./fake-pwsh/contracts') as { violations(op: string, script: string): string[] };

const PARAMS = { vm: 'x', label: 'backup/x/1', jobTimeoutSec: 60 };

function problems(node: Node, out: string[] = []): string[] {
  if (node.type === 'ERROR' || node.isMissing) out.push(`${node.isMissing ? 'missing' : 'error'} at line ${node.startPosition.row + 1}: ${node.text.slice(0, 80)}`);
  for (const c of node.children) if (c) problems(c, out);
  return out;
}

describe('generated PowerShell', () => {
  let parser: Parser;
  beforeAll(async () => {
    await Parser.init();
    parser = new Parser();
    const wasm = path.join(path.dirname(require.resolve('tree-sitter-powershell/package.json')), 'tree-sitter-powershell.wasm');
    parser.setLanguage(await Language.load(fs.readFileSync(wasm)));
  });

  test.each(SCRIPT_OPS)('%s parses without a syntax error', (op) => {
    const tree = parser.parse(buildScript(op, PARAMS))!;
    expect(problems(tree.rootNode)).toEqual([]);
  });

  test('the parser does find errors (an unclosed block, a broken pipeline)', () => {
    const broken = buildScript('release-checkpoint', PARAMS).replace("if (-not $snap) {", 'if (-not $snap {');
    expect(problems(parser.parse(broken)!.rootNode).length).toBeGreaterThan(0);
    expect(problems(parser.parse('Get-VM | | Where-Object { $_ }')!.rootNode).length).toBeGreaterThan(0);
  });
});

describe('the fake pwsh contracts', () => {
  test.each(SCRIPT_OPS)('%s as generated keeps them', (op) => {
    expect(violations(op, buildScript(op, PARAMS))).toEqual([]);
  });

  const release = buildScript('release-checkpoint', PARAMS);
  const byLabel = buildScript('checkpoints-by-label', PARAMS);
  const create = buildScript('create-checkpoint', PARAMS);

  test.each([
    ['release: the resume of a held VM deleted', 'release-checkpoint', release.replace(/\n  \$resumed = Resume-HvpHeld \$vm \(\[string\]\$p\.heldQuiet\)\n/, '\n  $resumed = $null\n')],
    ['release: any paused or saved VM resumed (the old way)', 'release-checkpoint', release.replace(/\n  \$resumed = Resume-HvpHeld \$vm \(\[string\]\$p\.heldQuiet\)\n/, "\n  if ($state -eq 'Paused') { Resume-VM -VM $vm; $resumed = 'Resume-VM' }\n")],
    ['Resume-HvpHeld resuming whatever is paused', 'release-checkpoint', release.replace("if ($held -eq 'pause' -and $state -eq 'Paused')", "if ($state -eq 'Paused')")],
    ['by label: a wildcard without the recovery filter', 'checkpoints-by-label', byLabel.replace("[string]$_.SnapshotType -eq 'Recovery' -and [string]$_.Name -eq [string]$p.label", '[string]$_.Name -like [string]$p.label')],
    ['by label: the recovery filter dropped', 'checkpoints-by-label', byLabel.replace("[string]$_.SnapshotType -eq 'Recovery' -and ", '')],
    ['create: label reuse matched with -like', 'create-checkpoint', create.replace('[string]$_.Name -eq [string]$p.label', '[string]$_.Name -like [string]$p.label')],
    ['create: pause before the record', 'create-checkpoint', create.replace("Write-HvpRecord ([string]$p.offlineMethod) ''", '')],
    ['create: a replica paused or saved like any VM', 'create-checkpoint', create.replace('if (-not $isReplica -and -not $quiesced', 'if (-not $quiesced')],
    ['create: a replica asked for application consistency', 'create-checkpoint', create.replace('if ($isReplica) { $level = [byte]2 }', '')],
    ['Resume-HvpHeld starting a replica', 'release-checkpoint', release.replace('  if (Test-HvpReplica $vm) { return $null }\n', '')],
    ['power: a replica resumed or started', 'power', buildScript('power', PARAMS).replace("[string]$p.action -ne 'resume-held' -and (Test-HvpReplica $vm)", '$false')],
    ['a job in state 2 counted as failed', 'list', buildScript('list', PARAMS).replace('-in 2, 3, 4, 5, 6', '-in 3, 4, 5, 6')],
  ])('%s is refused', (_what, op, mutated) => {
    expect(violations(op as string, mutated as string).length).toBeGreaterThan(0);
  });
});

describe('long paths: the checkpoint record on Windows', () => {
  let parser: Parser;
  beforeAll(async () => {
    await Parser.init();
    parser = new Parser();
    const wasm = path.join(path.dirname(require.resolve('tree-sitter-powershell/package.json')), 'tree-sitter-powershell.wasm');
    parser.setLanguage(await Language.load(fs.readFileSync(wasm)));
  });
  const vmId = '6f1c2a3b-0d4e-4f5a-8b9c-0123456789ab';
  // A state folder deep in a CSV volume: past MAX_PATH (260) without the \\?\ form.
  const deepCsv = `C:\\ClusterStorage\\Volume1\\${'hvprotect-state-folder\\'.repeat(12)}hyperv-rct`;

  test('paths handed to PowerShell get the \\\\?\\ form on Windows (local, CSV, SMB), and stay as they are elsewhere', () => {
    const file = new CheckpointRecords(deepCsv).file(vmId);
    expect(file.length).toBeGreaterThan(260);
    expect(scriptFilePath(path.win32.join(deepCsv, `${vmId}.checkpoint.json`), 'win32')).toBe(`\\\\?\\${deepCsv}\\${vmId}.checkpoint.json`);
    expect(scriptFilePath('\\\\fs01\\vms\\hvprotect\\..\\state\\x.json', 'win32')).toBe('\\\\?\\UNC\\fs01\\vms\\state\\x.json');
    expect(scriptFilePath('\\\\?\\C:\\ProgramData\\x.json', 'win32')).toBe('\\\\?\\C:\\ProgramData\\x.json');
    expect(() => scriptFilePath('state\\x.json', 'win32')).toThrow(/not an absolute Windows path/);
    expect(scriptFilePath('/var/lib/hvp/x.json', 'linux')).toBe('/var/lib/hvp/x.json');
  });

  test('the script keeps the \\\\?\\ path: it parses, and the record is written only with .NET file calls, never provider cmdlets', () => {
    const recordPath = scriptFilePath(path.win32.join(deepCsv, `${vmId}.checkpoint.json`), 'win32');
    const script = buildScript('create-checkpoint', { ...PARAMS, vm: vmId, recordPath });
    const b64 = /FromBase64String\('([A-Za-z0-9+/=]*)'\)\) \| ConvertFrom-Json/.exec(script)![1];
    expect(JSON.parse(Buffer.from(b64, 'base64').toString('utf8')).recordPath).toBe(recordPath);
    const tree = parser.parse(script)!;
    expect(problems(tree.rootNode)).toEqual([]);
    const fn = tree.rootNode.descendantsOfType('function_statement').find((f) => f?.childForFieldName?.('name')?.text === 'Write-HvpRecord' || f?.children.some((c) => c?.type === 'function_name' && c.text === 'Write-HvpRecord'))!;
    expect(fn).toBeDefined();
    // Windows PowerShell 5.1's FileSystem provider cmdlets do not all take \\?\ paths; .NET 4.6.2+ does.
    const cmdlets = fn.descendantsOfType('command_name').map((n) => n!.text);
    expect(cmdlets.filter((c) => /^(Move|Copy|Rename|New|Remove|Set|Get)-(Item|Content)$|^Out-File$|^Join-Path$|^Resolve-Path$/i.test(c))).toEqual([]);
    const text = fn.text;
    // Both the temp file and the final name derive from the path as given: no shortening on the way.
    expect(text).toMatch(/\$target = \[string\]\$p\.recordPath\n\s*\$tmp = \$target \+ '\.tmp'/);
    expect(text).toMatch(/\[IO\.File\]::Open\(\$tmp,/);
    expect(text).toMatch(/\[IO\.File\]::Replace\(\$tmp, \$target,|\[IO\.File\]::Move\(\$tmp, \$target\)/);
  });
});
