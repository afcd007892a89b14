// Guest disk images made by Debian's own tools (mkntfs + an ntfs-3g mount, mke2fs -d, mkfs.fat +
// mtools, sfdisk), never by hand:
// - makeGuestImages: small images for the unit tests (the readers are compared with The Sleuth
//   Kit, ntfs-3g, e2fsprogs and mtools on them);
// - sampleDiskImage: the whole disks of `npm start`'s sample VMs (sample.ts), built once per kind
//   and size and kept in a cache folder.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, promises as fsp } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import * as path from 'node:path';

const MiB = 1024 * 1024;

function sh(script: string, cwd: string): void {
  execFileSync('bash', ['-euo', 'pipefail', '-c', script], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A tree the file-system images are filled from: the same kinds of entries everywhere. */
function makeTree(dir: string, bigDirEntries: number): void {
  sh(
    `
    mkdir -p tree/big tree/sub/deeper/deepest "tree/Ünïcødé folder ✓"
    for i in $(seq 1 ${bigDirEntries}); do printf 'entry %d\\n' $i > tree/big/file-$(printf %04d $i).txt; done
    head -c 300000 /dev/urandom > tree/sub/random.bin
    printf 'hello from a guest\\n' > tree/sub/hello.txt
    printf 'deep\\n' > tree/sub/deeper/deepest/leaf.txt
    printf 'a long name in Unicode\\n' > "tree/Ünïcødé folder ✓/A file with a rather long name, more than 64 characters — ünïcødé.txt"
    : > tree/empty.txt
    printf 'tiny\\n' > tree/tiny.txt
    `,
    dir,
  );
}

export interface GuestImages {
  dir: string;
  ntfs: string;
  ext4: string;
  ext4Inline: string;
  fat32: string;
  /** GPT: p1 ESP (FAT32), p2 NTFS, p3 ext4, made with sfdisk; the file systems copied in with dd. */
  gptDisk: string;
  /** MBR: p1 FAT32 (primary), an extended partition with p5 ext4 (logical). */
  mbrDisk: string;
}

export function makeGuestImages(): GuestImages {
  const dir = mkdtempSync(path.join(tmpdir(), 'hvp-guestfs-'));
  makeTree(dir, 400);
  // NTFS through a real ntfs-3g mount: a fragmented file (written into the holes left by deleted
  // files), a sparse file, a hard link, an empty file, a 400-entry directory (index allocation).
  sh(
    `
    truncate -s 24M ntfs.img
    mkntfs -q -F -f -L GUESTNTFS ntfs.img >/dev/null 2>&1
    # ntfs-3g in the foreground (no_detach) so that we can wait for it to finish writing after umount.
    mkdir -p mnt && { ntfs-3g -o no_detach ntfs.img mnt & ntfs3g=$!; }
    trap 'umount mnt 2>/dev/null || true' EXIT
    until mountpoint -q mnt; do sleep 0.05; done
    cp -r tree/. mnt/
    ln mnt/sub/hello.txt mnt/sub/hello-hardlink.txt
    mkdir mnt/frag
    for i in $(seq 1 40); do head -c 40000 /dev/urandom > mnt/frag/filler-$i; done
    sync; for i in $(seq 1 2 40); do rm mnt/frag/filler-$i; done; sync
    head -c 1200000 /dev/urandom > mnt/frag/fragmented.bin
    truncate -s 3M mnt/sparse.bin
    printf 'island' | dd of=mnt/sparse.bin bs=1 seek=2000000 conv=notrunc status=none
    umount mnt
    wait $ntfs3g
    trap - EXIT
    `,
    dir,
  );
  // ext4: extents, a hashed (htree) directory, a hard link, a symlink; a second image with inline data.
  sh(
    `
    cp -r tree ext-tree
    ln ext-tree/sub/hello.txt ext-tree/sub/hello-hardlink.txt
    ln -s sub/hello.txt ext-tree/link-to-hello
    printf 'hostile\n' > "ext-tree/$(printf 'back\\\\slash ..\\a bell')"  # a name no host path should take as given
    truncate -s 3M ext-tree/sparse.bin
    printf 'island' | dd of=ext-tree/sparse.bin bs=1 seek=2000000 conv=notrunc status=none
    mke2fs -q -F -t ext4 -L guestext4 -b 1024 -d ext-tree ext4.img 16M
    e2fsck -fyD ext4.img >/dev/null 2>&1 || [ $? -le 1 ]  # -D indexes large folders (htree); mke2fs -d writes them linear
    mke2fs -q -F -t ext4 -L inline -O inline_data -I 256 -d ext-tree ext4-inline.img 16M
    `,
    dir,
  );
  // FAT32 with mtools: long names, a nested tree.
  sh(
    `
    mkfs.fat -F 32 -n GUESTFAT -C fat32.img $((40 * 1024)) >/dev/null
    export MTOOLS_SKIP_CHECK=1
    mcopy -s -i fat32.img tree/* ::/
    `,
    dir,
  );
  // A GPT disk and an MBR disk holding the images above.
  sh(
    `
    truncate -s ${100 * MiB} gpt.img
    printf 'label: gpt\\nstart=2048, size=${40 * 2048}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system partition"\\nstart=${2048 + 40 * 2048}, size=${24 * 2048}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="Basic data partition"\\nstart=${2048 + 64 * 2048}, size=${16 * 2048}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\\n' | sfdisk -q gpt.img
    dd if=fat32.img of=gpt.img bs=1M seek=1 conv=notrunc status=none
    dd if=ntfs.img of=gpt.img bs=1M seek=41 conv=notrunc status=none
    dd if=ext4.img of=gpt.img bs=1M seek=65 conv=notrunc status=none
    truncate -s ${64 * MiB} mbr.img
    printf 'label: dos\\nstart=2048, size=${40 * 2048}, type=c\\nstart=${2048 + 40 * 2048}, type=5\\nstart=${4096 + 40 * 2048}, size=${16 * 2048}, type=83\\n' | sfdisk -q mbr.img
    dd if=fat32.img of=mbr.img bs=1M seek=1 conv=notrunc status=none
    dd if=ext4.img of=mbr.img bs=1M seek=42 conv=notrunc status=none
    `,
    dir,
  );
  const p = (f: string) => path.join(dir, f);
  return { dir, ntfs: p('ntfs.img'), ext4: p('ext4.img'), ext4Inline: p('ext4-inline.img'), fat32: p('fat32.img'), gptDisk: p('gpt.img'), mbrDisk: p('mbr.img') };
}

// ---------------------------------------------------------------------------------------------
// The sample VMs' disks.
//
// Every kind is a GPT disk (sfdisk) with 1 MiB-aligned partitions and an unpartitioned tail
// (`freeTail`) that no file system uses: the guest write load keeps to such space
// (guest-io.ts), so the file systems in backups stay consistent.
//
//   windows      p1 EFI system partition (FAT32, "SYSTEM"), p2 NTFS ("Windows"): the Windows tree
//   windows-data p1 NTFS ("Data"): a data disk
//   file-server  p1 ESP, p2 NTFS ("Windows"), p3 FAT32 ("E-DATA"): file01's C: and E:
//   linux        p1 ext4 ("rootfs"): the Linux tree
//
// The Windows tree: ~3,100 files; Windows/System32 holds 2,000 entries (NTFS keeps it in a
// B+ tree of index blocks under $INDEX_ROOT); long Unicode names; a fragmented file (written
// into the holes left by deleted files); a sparse file; a hard link; an empty file; and
// data/big.log, the largest file, sized to 40% of the NTFS volume (several hundred MiB on a
// disk of 1 GiB or more; ~33 MiB on the 128 MiB default).
// ---------------------------------------------------------------------------------------------

export type SampleDiskKind = 'windows' | 'windows-data' | 'file-server' | 'linux';

/** Bump when what a kind holds changes: cached images of older versions are not reused. */
const SAMPLE_IMAGE_VERSION = 1;
const ESP_SIZE = 36 * MiB; // FAT32 needs 65,525 clusters: 32+ MiB with 512-byte clusters
const FAT_DATA_SIZE = 36 * MiB;

export interface SamplePartition {
  number: number;
  start: number;
  size: number;
  type: string;
  name: string;
  fileSystem: 'fat32' | 'ntfs' | 'ext4';
  label: string;
}

export interface SampleDiskLayout {
  kind: SampleDiskKind;
  size: number;
  partitions: SamplePartition[];
  /** Space after the last partition that no file system uses (before the backup GPT's last MiB). */
  freeTail: { offset: number; length: number };
}

const GPT_TYPE = {
  esp: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  basic: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
  linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
};

/** The smallest disk each kind fits on. */
export const SAMPLE_DISK_MIN: Record<SampleDiskKind, number> = {
  windows: 96 * MiB,
  'windows-data': 48 * MiB,
  'file-server': 128 * MiB,
  linux: 48 * MiB,
};

export function sampleDiskLayout(kind: SampleDiskKind, size: number): SampleDiskLayout {
  if (!(kind in SAMPLE_DISK_MIN)) throw new RangeError(`no sample disk kind ${JSON.stringify(kind)}; kinds: ${Object.keys(SAMPLE_DISK_MIN).join(', ')}`);
  if (!Number.isSafeInteger(size) || size % MiB !== 0 || size < SAMPLE_DISK_MIN[kind]) {
    throw new RangeError(`a ${kind} sample disk must be a whole number of MiB, at least ${SAMPLE_DISK_MIN[kind] / MiB} MiB; got ${size} bytes`);
  }
  const tail = Math.max(8 * MiB, Math.floor(size / 16 / MiB) * MiB);
  const end = size - tail; // partitions end here
  const parts: Omit<SamplePartition, 'number'>[] = [];
  let at = MiB;
  const add = (len: number, type: string, name: string, fileSystem: SamplePartition['fileSystem'], label: string) => {
    parts.push({ start: at, size: len, type, name, fileSystem, label });
    at += len;
  };
  if (kind === 'windows' || kind === 'file-server') add(ESP_SIZE, GPT_TYPE.esp, 'EFI system partition', 'fat32', 'SYSTEM');
  if (kind === 'windows') add(end - at, GPT_TYPE.basic, 'Basic data partition', 'ntfs', 'Windows');
  if (kind === 'file-server') {
    add(end - at - FAT_DATA_SIZE, GPT_TYPE.basic, 'Basic data partition', 'ntfs', 'Windows');
    add(FAT_DATA_SIZE, GPT_TYPE.basic, 'Basic data partition', 'fat32', 'E-DATA');
  }
  if (kind === 'windows-data') add(end - at, GPT_TYPE.basic, 'Basic data partition', 'ntfs', 'Data');
  if (kind === 'linux') add(end - at, GPT_TYPE.linux, 'rootfs', 'ext4', 'rootfs');
  return { kind, size, partitions: parts.map((p, i) => ({ ...p, number: i + 1 })), freeTail: { offset: end, length: tail - MiB } };
}

export function sampleImageCacheDir(): string {
  return process.env.HVPROTECT_LAB_IMAGE_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'hvprotect', 'lab-images');
}

function run(script: string, cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-euo', 'pipefail', '-c', script], { cwd, stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C.UTF-8' } });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr = (stderr + c).slice(-4000)));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`building a sample disk image failed (exit ${code}): ${stderr.trim()}`))));
  });
}

const inflight = new Map<string, Promise<string>>();

/**
 * A raw image (exactly `size` bytes, sparse) of a sample disk of this kind; built with Debian's
 * tools the first time, then taken from the cache folder (sampleImageCacheDir()).
 */
export function sampleDiskImage(kind: SampleDiskKind, size: number, cacheDir = sampleImageCacheDir()): Promise<string> {
  const layout = sampleDiskLayout(kind, size);
  const file = path.join(cacheDir, `${kind}-${size / MiB}MiB-v${SAMPLE_IMAGE_VERSION}.img`);
  let p = inflight.get(file);
  if (!p) {
    p = (async () => {
      try {
        await fsp.access(file);
        return file;
      } catch {
        /* build it */
      }
      await fsp.mkdir(cacheDir, { recursive: true });
      const dir = await fsp.mkdtemp(path.join(tmpdir(), `hvp-sample-${kind}-`));
      try {
        await buildSampleDisk(layout, dir);
        const tmp = `${file}.${process.pid}.tmp`;
        await run(`cp --sparse=always disk.img ${JSON.stringify(tmp)}`, dir);
        await fsp.rename(tmp, file);
        return file;
      } finally {
        await run('umount mnt 2>/dev/null || true', dir).catch(() => undefined);
        await fsp.rm(dir, { recursive: true, force: true });
      }
    })();
    inflight.set(file, p);
    p.catch(() => inflight.delete(file));
  }
  return p;
}

/** Fills `tree/` (in `dir`) with the Windows tree; `bigBytes` is the size of data/big.log. */
function windowsTreeScript(bigBytes: number): string {
  return `
    mkdir -p tree && cd tree
    mkdir -p Windows/System32/drivers/etc Windows/Logs/CBS "Program Files/Contoso/App" Users/Administrator/Documents Users/Public data
    # 2,000 entries in one folder: NTFS indexes it in a B+ tree (index allocation, several levels)
    for i in $(seq -w 1 2000); do printf 'Windows component %s, built by hvprotect sample\\n' $i > Windows/System32/component-$i.dll; done
    for i in $(seq 1 40 2000); do head -c 6000 /dev/urandom > Windows/System32/component-$(printf %04d $i).dll; done
    printf '127.0.0.1 localhost\\n::1 localhost\\n' > Windows/System32/drivers/etc/hosts
    for i in $(seq -w 1 400); do printf '%s Info CBS Session %s initialized\\n' 2026-11-30 $i > Windows/Logs/CBS/CbsPersist_$i.log; done
    for d in $(seq 1 6); do mkdir -p "Program Files/Contoso/App/module-$d"; for i in $(seq -w 1 100); do printf 'module %d resource %s\\n' $d $i > "Program Files/Contoso/App/module-$d/res-$i.dat"; done; done
    mkdir -p "Users/Administrator/Documents/Ünïcødé folder ✓"
    printf 'a long name in Unicode\\n' > "Users/Administrator/Documents/Ünïcødé folder ✓/A file with a rather long name, more than 64 characters — ünïcødé.txt"
    printf 'quarterly report\\n' > "Users/Administrator/Documents/Отчёт за квартал — 季度报告 — تقرير ربع سنوي — a long Unicode name of many scripts.txt"
    printf 'hello from a guest\\n' > Users/Public/hello.txt
    printf 'tiny\\n' > Users/Public/tiny.txt
    : > empty.txt
    { seq -f 'line %.0f of the big log of the hvprotect sample guest' 1 $(( ${bigBytes} / 50 + 1 )) || true; } | head -c ${bigBytes} > data/big.log
    cd ..
  `;
}

/** Copies tree/ into the NTFS image ntfs.img through a real ntfs-3g mount, then adds what cp cannot: a hard link, a sparse and a fragmented file. */
function ntfsFillScript(volumeBytes: number, hello: string): string {
  const frag = Math.max(256 * 1024, Math.min(4 * MiB, Math.floor(volumeBytes / 64)));
  const piece = Math.floor(frag / 20);
  return `
    mkdir -p mnt && { ntfs-3g -o no_detach ntfs.img mnt & ntfs3g=$!; }
    until mountpoint -q mnt; do sleep 0.05; done
    cp -r tree/. mnt/
    ln mnt/${hello}.txt mnt/${hello}-hardlink.txt
    # A fragmented file: 40 fillers, balloons taking the rest of the free space, half the fillers
    # deleted; the file can only go into their holes. Then the balloons go.
    mkdir -p mnt/data/frag
    for i in $(seq 1 40); do head -c ${piece} /dev/urandom > mnt/data/frag/filler-$i; done
    for b in 1 2 3; do sync; head -c $(df -B1 --output=avail mnt | tail -1) /dev/zero > mnt/balloon-$b 2>/dev/null || true; done
    # ntfs-3g places consecutive fillers in two interleaved runs: deleting i % 4 = 1, 2 leaves holes between kept ones either way
    sync; for i in $(seq 1 40); do if [ $((i % 4)) = 1 ] || [ $((i % 4)) = 2 ]; then rm mnt/data/frag/filler-$i; fi; done; sync
    head -c $(( ${piece} * 20 )) /dev/urandom > mnt/data/fragmented.bin
    rm mnt/balloon-*
    truncate -s ${Math.min(64 * MiB, Math.floor(volumeBytes / 4))} mnt/data/sparse.vhd
    printf 'island in a sparse file' | dd of=mnt/data/sparse.vhd bs=1 seek=${Math.floor(volumeBytes / 8)} conv=notrunc status=none
    umount mnt
    wait $ntfs3g  # ntfs-3g has written everything
  `;
}

async function buildSampleDisk(layout: SampleDiskLayout, dir: string): Promise<void> {
  const parts = layout.partitions;
  const sfdisk = `label: gpt\\n${parts.map((p) => `start=${p.start / 512}, size=${p.size / 512}, type=${p.type}, name="${p.name}"`).join('\\n')}\\n`;
  await run(`truncate -s ${layout.size} disk.img && printf '${sfdisk}' | sfdisk -q disk.img`, dir);
  const place = (img: string, p: SamplePartition) => run(`dd if=${img} of=disk.img bs=1M seek=${p.start / MiB} conv=notrunc,sparse status=none && rm ${img}`, dir);
  for (const p of parts) {
    if (p.fileSystem === 'fat32' && p.label === 'SYSTEM') {
      await run(
        `
        mkfs.fat -F 32 -s 1 -n SYSTEM -C esp.img ${p.size / 1024} >/dev/null
        mkdir -p esp/EFI/Microsoft/Boot esp/EFI/Boot
        head -c 1500000 /dev/urandom > esp/EFI/Microsoft/Boot/bootmgfw.efi
        cp esp/EFI/Microsoft/Boot/bootmgfw.efi esp/EFI/Boot/bootx64.efi
        head -c 28672 /dev/urandom > esp/EFI/Microsoft/Boot/BCD
        mcopy -s -i esp.img esp/EFI ::/
        `,
        dir,
      );
      await place('esp.img', p);
    } else if (p.fileSystem === 'fat32') {
      await run(
        `
        mkfs.fat -F 32 -s 1 -n ${p.label} -C fat.img ${p.size / 1024} >/dev/null
        mkdir -p fat/Shares/Finance "fat/Shares/Long folder name on a FAT32 data volume"
        for i in $(seq -w 1 300); do printf 'invoice %s\\n' $i > fat/Shares/Finance/invoice-$i.txt; done
        printf 'a long FAT name\\n' > "fat/Shares/Long folder name on a FAT32 data volume/Ünïcødé file name on FAT32.txt"
        head -c 2000000 /dev/urandom > fat/Shares/archive.bin
        : > fat/empty.txt
        mcopy -s -i fat.img fat/Shares fat/empty.txt ::/
        `,
        dir,
      );
      await place('fat.img', p);
    } else if (p.fileSystem === 'ntfs') {
      const big = Math.floor((p.size * (p.label === 'Data' ? 0.3 : 0.4)) / MiB) * MiB;
      const tree =
        p.label === 'Data'
          ? `mkdir -p tree/Shares/Web/site tree/data && for i in $(seq -w 1 500); do printf 'page %s\\n' $i > tree/Shares/Web/site/page-$i.html; done
             { seq -f 'line %.0f of the web log' 1 $(( ${big} / 25 + 1 )) || true; } | head -c ${big} > tree/data/big.log
             printf 'hello from a guest\\n' > tree/hello.txt && : > tree/empty.txt`
          : windowsTreeScript(big);
      await run(`rm -rf tree; ${tree}\ntruncate -s ${p.size} ntfs.img && mkntfs -q -F -f -L ${p.label} ntfs.img >/dev/null 2>&1\n${ntfsFillScript(p.size, p.label === 'Data' ? 'hello' : 'Users/Public/hello')}`, dir);
      await place('ntfs.img', p);
    } else {
      const big = Math.floor((p.size * 0.3) / MiB) * MiB;
      await run(
        `
        rm -rf root && mkdir -p root/etc root/home/ubuntu root/var/log/journal root/var/lib/app root/usr/share/doc
        printf 'app-linux01\\n' > root/etc/hostname
        printf 'PRETTY_NAME="Ubuntu 22.04 LTS"\\nNAME="Ubuntu"\\n' > root/etc/os-release
        for i in $(seq -w 1 1500); do printf 'package %s documentation\\n' $i > root/usr/share/doc/pkg-$i.txt; done
        for i in $(seq -w 1 200); do printf 'journal entry %s\\n' $i > root/var/log/journal/system-$i.journal; done
        printf 'hello from a guest\\n' > root/home/ubuntu/hello.txt
        ln root/home/ubuntu/hello.txt root/home/ubuntu/hello-hardlink.txt
        ln -s hello.txt root/home/ubuntu/link-to-hello
        printf 'tiny\\n' > root/home/ubuntu/tiny.txt
        mkdir -p "root/home/ubuntu/Ünïcødé folder ✓"
        printf 'a long name in Unicode\\n' > "root/home/ubuntu/Ünïcødé folder ✓/A file with a rather long name, more than 64 characters — ünïcødé.txt"
        : > root/home/ubuntu/empty.txt
        truncate -s ${Math.floor(p.size / 4)} root/var/lib/app/sparse.db
        printf 'island in a sparse file' | dd of=root/var/lib/app/sparse.db bs=1 seek=${Math.floor(p.size / 8)} conv=notrunc status=none
        { seq -f 'line %.0f of the syslog of the hvprotect sample guest' 1 $(( ${big} / 50 + 1 )) || true; } | head -c ${big} > root/var/log/syslog
        mke2fs -q -F -t ext4 -L ${p.label} -d root ext4.img ${p.size / 1024}k
        e2fsck -fyD ext4.img >/dev/null 2>&1 || [ $? -le 1 ]  # -D indexes large folders (htree); mke2fs -d writes them linear
        `,
        dir,
      );
      await place('ext4.img', p);
    }
  }
}
