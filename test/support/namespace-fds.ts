// The fds a process holds on one network namespace: what the namespace handles of the
// dialer keep open. An fd opened through a pinned path reads as that path in /proc/PID/fd,
// one from /proc as "net:[INODE]": both stat as the namespace's nsfs inode.

import { readdirSync, statfsSync, statSync } from 'node:fs';

/** statfs f_type of nsfs (linux/magic.h NSFS_MAGIC). */
const NSFS_MAGIC = 0x6e736673;

/** How many fds of process `pid` refer to the network namespace pinned at `netnsPath`. */
export function namespaceFds(netnsPath: string, pid: number | 'self' = 'self'): number {
  return namespaceInodeFds(statSync(netnsPath), pid);
}

/** The same by the namespace's nsfs identity (stat of its path, kept for once the path is gone). */
export function namespaceInodeFds(namespace: { dev: number; ino: number }, pid: number | 'self' = 'self'): number {
  let count = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const st = statSync(`/proc/${pid}/fd/${fd}`);
      if (st.ino === namespace.ino && st.dev === namespace.dev) count++;
    } catch {
      // closed while we looked
    }
  }
  return count;
}

/**
 * How many namespaces process `pid` holds fds on beyond its own (the dialer keeps one open
 * to return its worker threads to): the namespace handles its dials keep.
 */
export function keptNamespaceHandles(pid: number | 'self' = 'self'): number {
  let count = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (statfsSync(`/proc/${pid}/fd/${fd}`).type === NSFS_MAGIC) count++;
    } catch {
      // closed while we looked
    }
  }
  return Math.max(0, count - 1);
}
