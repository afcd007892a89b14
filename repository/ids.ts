// Every name that becomes part of a path is checked here first: a strict charset, a length
// limit, and no leading dot, so no client string can climb out of the repository.
import { RepositoryError } from './errors';

const DATA_SOURCE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const DISK_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Point ids are UTC timestamps with milliseconds: they sort in creation order. */
const POINT_ID = /^\d{8}T\d{6}\.\d{3}Z$/;
const SESSION_ID = /^[0-9a-f]{32}$/;
const DIGEST = /^[0-9a-f]{64}$/;

function check(kind: string, value: unknown, re: RegExp, form: string): string {
  if (typeof value !== 'string' || !re.test(value) || value.includes('..')) {
    throw new RepositoryError(
      'INVALID_ARGUMENT',
      `invalid ${kind} ${JSON.stringify(String(value)).slice(0, 80)}`,
      `a ${kind} is ${form}`,
    );
  }
  return value;
}

export const checkDataSourceId = (v: unknown): string =>
  check('data source id', v, DATA_SOURCE_ID, '1-128 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit, without ".."');
export const checkDiskId = (v: unknown): string =>
  check('disk id', v, DISK_ID, '1-64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit, without ".."');
export const checkPointId = (v: unknown): string =>
  check('point id', v, POINT_ID, 'a UTC timestamp like 20261124T154130.123Z');
export const checkSessionId = (v: unknown): string =>
  check('session id', v, SESSION_ID, '32 lowercase hex digits');
export const checkDigest = (v: unknown): string =>
  check('digest', v, DIGEST, 'a SHA-256 as 64 lowercase hex digits');

export const isDigest = (v: unknown): v is string => typeof v === 'string' && DIGEST.test(v);
export const isPointId = (v: unknown): v is string => typeof v === 'string' && POINT_ID.test(v);
export const isDataSourceId = (v: unknown): v is string =>
  typeof v === 'string' && DATA_SOURCE_ID.test(v) && !v.includes('..');
export const isDiskId = (v: unknown): v is string => typeof v === 'string' && DISK_ID.test(v) && !v.includes('..');

/** Point id for a moment; `after` keeps ids strictly increasing within a data source. */
export function pointIdFor(date: Date, after?: string): string {
  let ms = date.getTime();
  if (after && isPointId(after)) ms = Math.max(ms, parsePointId(after).getTime() + 1);
  return new Date(ms).toISOString().replace(/[-:]/g, '');
}

export function parsePointId(id: string): Date {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z$/.exec(id);
  if (!m) throw new RepositoryError('INVALID_ARGUMENT', `invalid point id ${id}`);
  return new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}.${m[7]}Z`);
}
