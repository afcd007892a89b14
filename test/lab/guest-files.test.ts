// `lab vm files put|rm`: files put into and removed from a lab guest's NTFS, ext4 and FAT32
// volumes (a GPT disk made by Debian's tools) land through the guest write path — change tracking
// reports exactly the pieces written — and The Sleuth Kit sees the result on the disk.
import { execFileSync } from 'node:child_process';
import { promises as fsp, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { LabHypervisor } from '../../hypervisor/lab';
import { changeGuestFile } from '../../hypervisor/lab/guest-files';
import { makeGuestImages, type GuestImages } from '../guestfs/images';
import { fls } from '../guestfs/support';
import { MiB, tempLab } from './helpers';

function mergeRanges(rs: Array<{ offset: number; length: number }>): Array<{ offset: number; length: number }> {
  const out: Array<{ offset: number; length: number }> = [];
  for (const r of [...rs].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}

let img: GuestImages;
beforeAll(() => {
  img = makeGuestImages();
});
afterAll(() => rmSync(img.dir, { recursive: true, force: true }));

test('put and rm on NTFS, ext4 and FAT32 go through the guest write path and read back with fls and icat', async () => {
  const { lab, cleanup } = await tempLab();
  try {
    await lab.createHost('hv1');
    const hv = await LabHypervisor.open(lab, 'hv1');
    const vm = await lab.createVm({ name: 'files01', host: 'hv1', disks: [{ sizeBytes: 100 * MiB, content: { kind: 'zeros' } }] });
    const disk = readFileSync(img.gptDisk);
    for (let o = 0; o < disk.length; o += 4 * MiB) await lab.writeDisk('files01', 'scsi0-0', o, disk.subarray(o, o + 4 * MiB));
    // A reference point for change tracking, as a first backup leaves.
    const c0 = await hv.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    await hv.releaseCheckpoint(vm.vmId, c0.checkpointId);
    const ref = (await hv.inspectVm(vm.vmId)).disks[0].changeTrackingId!;

    const source = path.join(img.dir, 'report.txt');
    writeFileSync(source, 'quarterly report, put by the lab\n'.repeat(1000));
    const written: Array<{ offset: number; length: number }> = [];
    for (const item of ['GUESTNTFS:/reports/2026/report.txt', 'guestext4:/reports/report.txt', 'scsi0-0p1:/REPORTS/report.txt']) {
      const r = await changeGuestFile(lab, 'files01', item, { put: source });
      expect(r.bytesWritten).toBeGreaterThan(0);
      expect(r.bytesWritten).toBeLessThan(4 * MiB); // pieces, not the volume
      written.push(...r.ranges);
    }
    for (const item of ['GUESTNTFS:/tiny.txt', 'guestext4:/tiny.txt', 'GUESTFAT:/tiny.txt']) written.push(...(await changeGuestFile(lab, 'files01', item, { rm: true })).ranges);
    await expect(changeGuestFile(lab, 'files01', 'GUESTNTFS:/no/such.txt', { rm: true })).rejects.toThrow(/GUESTNTFS|scsi0-0p2:\/no: no such file or directory/);
    await expect(changeGuestFile(lab, 'files01', 'NOPE:/a', { rm: true })).rejects.toThrow(/no volume NOPE .*scsi0-0p2 \(ntfs GUESTNTFS\)/);

    // Change tracking saw every piece written (and nothing else).
    const c1 = await hv.createBackupCheckpoint(vm.vmId, { mode: 'online' });
    const changed = await hv.changedRanges(vm.vmId, c1.checkpointId, 'scsi0-0', ref);
    expect(changed.tracked).toBe(true);
    expect(changed.ranges).toEqual(mergeRanges(written));
    await hv.releaseCheckpoint(vm.vmId, c1.checkpointId);

    const raw = path.join(img.dir, 'after.raw');
    await fsp.writeFile(raw, await lab.readDisk('files01', 'scsi0-0', 0, 100 * MiB));
    for (const [sector, p] of [[83968, '/reports/2026/report.txt'], [133120, '/reports/report.txt'], [2048, '/REPORTS/report.txt']] as const) {
      const listed = fls(raw, sector);
      const e = listed.find((x) => x.path.toLowerCase() === p.toLowerCase())!;
      expect(execFileSync('icat', ['-o', String(sector), raw, e.inode]).equals(readFileSync(source))).toBe(true);
      expect(listed.some((x) => x.path.toLowerCase() === '/tiny.txt')).toBe(false);
    }
    execFileSync('e2fsck', ['-fn', img.ext4], { stdio: 'ignore' }); // the source image untouched
  } finally {
    await cleanup();
  }
});
