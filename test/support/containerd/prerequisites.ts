// What the private containerd needs on the machine, and whether to run at all: root, and
// the Debian packages containerd, runc, containernetworking-plugins, iproute2 and mount
// (gcc and libc6-dev for the pause image). It never installs anything itself (the
// containerd releases besides the system's are releases.ts's concern).

import { existsSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { ReleaseBinaries } from './releases';

const REQUIRE = process.env.CRI_PORTFORWARD_REQUIRE_ROOT === '1';

/** Where Debian's containernetworking-plugins puts the CNI plugins. */
export const CNI_BIN_DIR = '/usr/lib/cni';
/** In containerd's PATH after its release's own dir: its shims look runc up there, and /usr/sbin matters. */
export const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** `false` when root, else the reason to skip (or a thrown error under CI). */
export function containerdSkipReason(): string | false {
  if (process.getuid?.() === 0) return false;
  const reason = 'needs root: runs a private containerd with its CRI plugin, runc and CNI (run as root, as CI does)';
  if (REQUIRE) throw new Error(`CRI_PORTFORWARD_REQUIRE_ROOT=1 but ${reason}`);
  return reason;
}

/** A binary on PATH or in the system dirs, or undefined. */
export function lookPath(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), ...SYSTEM_PATH.split(':')];
  for (const d of dirs) {
    if (!d) continue;
    const p = join(d, name);
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

function need(name: string, pkg: string): string {
  const p = lookPath(name);
  if (!p) throw new Error(`containerd harness: '${name}' not found (install the Debian package '${pkg}')`);
  return p;
}

export interface Tools extends ReleaseBinaries {
  runc: string;
  ip: string;
  umount: string;
}

/** The release's binaries (releases.ts) and what the machine must have besides. */
export function checkPrerequisites(release: ReleaseBinaries): Tools {
  const tools: Tools = {
    ...release,
    runc: need('runc', 'runc'),
    ip: need('ip', 'iproute2'),
    umount: need('umount', 'mount'),
  };
  for (const plugin of ['bridge', 'host-local', 'loopback']) {
    if (!existsSync(join(CNI_BIN_DIR, plugin))) {
      throw new Error(
        `containerd harness: CNI plugin ${join(CNI_BIN_DIR, plugin)} not found (install the Debian package 'containernetworking-plugins')`,
      );
    }
  }
  return tools;
}
