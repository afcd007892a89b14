/** The one error a caller of the VHDX library handles: a file that is not a sound VHDX, or a use the file does not allow. */
export class VhdxError extends Error {
  override readonly name = 'VhdxError';
  constructor(readonly file: string, readonly defect: string) {
    super(`${file}: ${defect}`);
  }
}
