// One error for every defect found in a guest's partition table or file system: it names the
// volume, the path being read and what was wrong, and is never a crash.
export class GuestFsError extends Error {
  override readonly name = 'GuestFsError';
  constructor(
    readonly volume: string,
    readonly path: string,
    readonly defect: string,
  ) {
    super(`${volume}${path ? `:${path}` : ''}: ${defect}`);
  }
}
