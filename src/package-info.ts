// Where this package lives on disk (for proto/ and native/) and its version. The compiled
// code runs from dist/ (the product) or build/src/ (the tests), so walk up to package.json.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

function findPackageRoot(start: string): string {
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto'))) return dir;
    if (dirname(dir) === dir) throw new Error(`cannot find the cri-portforward package above ${start}`);
  }
}

export const PACKAGE_ROOT = findPackageRoot(__dirname);

export const PACKAGE_VERSION: string = (
  JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }
).version;
