// Guest disk images made by Debian's own tools (mkntfs + an ntfs-3g mount, mke2fs -d, mkfs.fat +
// mtools, sfdisk), small enough for the unit tests: the readers are compared with The Sleuth Kit,
// ntfs-3g, e2fsprogs and mtools on them.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
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
