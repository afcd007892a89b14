#!/usr/bin/env node
// npm pretest: the Debian tools the tests compare with (or drive) must be there. Installs the
// missing ones where it can (root and apt-get), else stops at once naming the one command to run.
const { execFileSync, spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
// [package, is it there?] — each check names what the tests run.
const needs = [
  ['qemu-utils', () => has('qemu-img')], // VHDX oracle
  ['python3-libvhdi', () => spawnSync('/usr/bin/python3', ['-c', 'import pyvhdi'], { stdio: 'ignore' }).status === 0], // VHDX oracle
  ['chromium', () => existsSync('/usr/bin/chromium')], // Web UI test (playwright-core drives Debian's Chromium)
  ['openssl', () => has('openssl')], // throwaway CA of the TLS tests
  ['ntfs-3g', () => has('mkntfs') && has('ntfs-3g') && has('ntfscat')], // NTFS guest images, ntfscat oracle
  ['sleuthkit', () => has('fls') && has('icat') && has('mmls')], // listing and file oracles
  ['e2fsprogs', () => has('mke2fs') && has('debugfs') && has('e2fsck')], // ext4 guest images, debugfs oracle
  ['dosfstools', () => has('mkfs.fat') && has('fsck.fat')], // FAT guest images
  ['mtools', () => has('mcopy')], // FAT guest images, mcopy oracle
  ['prometheus', () => has('promtool')], // promtool checks and unit-tests the alert rules in deploy/prometheus
  ['fdisk', () => has('sfdisk')], // GPT and MBR guest disks
];

const missing = needs.filter(([, ok]) => !ok()).map(([pkg]) => pkg);
if (missing.length === 0) process.exit(0);
const command = `apt-get install -y ${missing.join(' ')}`;
if (process.getuid?.() === 0 && has('apt-get')) {
  console.error(`pretest: installing Debian packages the tests need: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
    execFileSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'inherit', env });
  } catch {
    console.error(`pretest: installing failed; run: ${command}`);
    process.exit(1);
  }
  const still = needs.filter(([, ok]) => !ok()).map(([pkg]) => pkg);
  if (still.length === 0) process.exit(0);
  console.error(`pretest: still missing after apt-get: ${still.join(' ')}`);
  process.exit(1);
}
console.error(`pretest: the tests need Debian packages that are missing: ${missing.join(' ')}\nrun as root: ${command}`);
process.exit(1);
