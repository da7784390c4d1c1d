// What this process may do to network namespaces. Both creating a sandbox's namespace
// (embedded store) and entering one to dial a pod (every mode) need CAP_SYS_ADMIN.

import { promises as fs } from 'node:fs';

/** Bit of CAP_SYS_ADMIN in /proc/self/status CapEff. */
const CAP_SYS_ADMIN = 21n;

/** True when the process may create, mount and enter network namespaces. */
export async function hasSysAdmin(): Promise<boolean> {
  const status = await fs.readFile('/proc/self/status', 'utf8');
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  return hex !== undefined && ((BigInt(`0x${hex}`) >> CAP_SYS_ADMIN) & 1n) === 1n;
}
