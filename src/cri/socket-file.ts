// The CRI unix socket file, shared by the embedded server and the proxy: both take over a
// stale file and refuse a live one.

import { promises as fs } from 'node:fs';
import { connect } from 'node:net';

/**
 * A socket file left by a crashed server is replaced; one that a live server answers on
 * is an error, so that two servers never fight over one kubelet.
 */
export async function clearStaleSocket(path: string): Promise<void> {
  let stat;
  try {
    stat = await fs.lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!stat.isSocket()) {
    throw new Error(`CRI socket path ${path} exists and is not a socket; refusing to replace it`);
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another server is already listening on CRI socket ${path}`);
  await fs.rm(path, { force: true });
}

/**
 * The name a server binds its socket under before renaming it over the socket path. libuv
 * unlinks the name a listener was bound under when it closes: bound under a name of its
 * own, a server that closes never removes a socket file that belongs to another process by
 * then (an upgrade's new one, renamed over the path).
 */
export function bindPathFor(socketPath: string, pid = process.pid): string {
  return `${socketPath}.${pid}`;
}
