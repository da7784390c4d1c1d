// Mount points under a dir, from /proc/self/mountinfo: what a test or a harness must not
// leave behind (network namespace bind mounts, container rootfs and shm mounts).

import { readFileSync } from 'node:fs';

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mount points under `dir`, deepest first (the order to unmount them in). */
export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => unescapeMountPath(line.split(' ')[4] ?? ''))
    .filter((m) => m.startsWith(dir + '/'))
    .sort((a, b) => b.split('/').length - a.split('/').length || b.length - a.length);
}
