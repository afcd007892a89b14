// Which chunks a recovery point names: a restore grant reads only those. Built once per point from
// its disks' indexes (32 bytes per slot, all-zero slots left out), kept for the few points being
// restored at a time. Digests are kept as 32-byte binary strings: 1 TiB of 4 MiB chunks is 262,144
// of them, about 20 MB.
import { DIGEST_SIZE, readSlots } from '../repository/fixed-index';
import type { Repository } from '../repository';

const KEEP_POINTS = 8;

export class PointDigests {
  private readonly sets = new Map<string, Promise<Set<string>>>();

  constructor(private readonly repo: Repository) {}

  async has(ds: string, pid: string, digestHex: string): Promise<boolean> {
    if (!/^[0-9a-f]{64}$/.test(digestHex)) return false;
    const key = `${ds}/${pid}`;
    let set = this.sets.get(key);
    if (set) {
      // Most recently used last.
      this.sets.delete(key);
      this.sets.set(key, set);
    } else {
      set = this.build(ds, pid);
      this.sets.set(key, set);
      set.catch(() => this.sets.delete(key));
      while (this.sets.size > KEEP_POINTS) this.sets.delete(this.sets.keys().next().value!);
    }
    return (await set).has(Buffer.from(digestHex, 'hex').toString('latin1'));
  }

  private async build(ds: string, pid: string): Promise<Set<string>> {
    const point = await this.repo.getPoint(ds, pid);
    const out = new Set<string>();
    const zero = Buffer.alloc(DIGEST_SIZE);
    for (const d of point.disks) {
      for await (const { slots } of readSlots(this.repo.indexPath(ds, pid, d.diskId))) {
        for (let o = 0; o < slots.length; o += DIGEST_SIZE) {
          if (slots.compare(zero, 0, DIGEST_SIZE, o, o + DIGEST_SIZE) !== 0) out.add(slots.toString('latin1', o, o + DIGEST_SIZE));
        }
      }
    }
    return out;
  }
}
