// The generated PowerShell, read as code: every script parses with a PowerShell grammar
// (tree-sitter-powershell, the grammar's own WebAssembly build), and the contracts the fake pwsh
// holds every call to reject the edits that would hurt on a real host.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Language, Parser, type Node } from 'web-tree-sitter';
import { SCRIPT_OPS, buildScript } from '../../hypervisor/hyperv/scripts';
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
    ['a job in state 2 counted as failed', 'list', buildScript('list', PARAMS).replace('-in 2, 3, 4, 5, 6', '-in 3, 4, 5, 6')],
  ])('%s is refused', (_what, op, mutated) => {
    expect(violations(op as string, mutated as string).length).toBeGreaterThan(0);
  });
});
