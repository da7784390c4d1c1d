// The fds a process holds on one network namespace: what the namespace handles of the
// dialer keep open. An fd opened through a pinned path reads as that path in /proc/PID/fd,
// one from /proc as "net:[INODE]": both stat as the namespace's nsfs inode.

import { readdirSync, statSync } from 'node:fs';

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
