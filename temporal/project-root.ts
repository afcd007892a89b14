import fs from 'node:fs';
import path from 'node:path';

let cached: string | undefined;

/** The folder with hvprotect's package.json, from source (ts-jest) or from dist/. */
export function projectRoot(): string {
  if (cached) return cached;
  let dir = __dirname;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg) && JSON.parse(fs.readFileSync(pkg, 'utf8')).name === 'hvprotect') return (cached = dir);
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find hvprotect's package.json above ${__dirname}`);
    dir = up;
  }
}
