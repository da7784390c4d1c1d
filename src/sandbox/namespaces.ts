// Named network namespaces for the embedded store: a namespace is kept alive by a bind
// mount of its nsfs file at a path of ours (what `ip netns add` does under /run/netns).
// We shell out to util-linux `unshare` here: sandbox creation is rare, and the process
// that enters the new namespace (to bring lo up) is never ours, so no thread of this
// process ever changes namespace outside the native dialer.

import { execFile } from 'node:child_process';
import { promises as fs, statfsSync } from 'node:fs';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** statfs f_type of nsfs (linux/magic.h NSFS_MAGIC). */
const NSFS_MAGIC = 0x6e736673;
/** Bound on unshare/umount so a wedged mount table cannot hang an RPC forever. */
const COMMAND_TIMEOUT_MS = 10_000;

/** Create a new network namespace with lo up, pinned by a bind mount at `path`. */
export async function createNetns(path: string): Promise<void> {
  await fs.writeFile(path, '', { flag: 'wx', mode: 0o444 });
  try {
    // unshare creates the namespace, bind-mounts it onto `path`, then runs ip inside it.
    await run('unshare', [`--net=${path}`, 'ip', 'link', 'set', 'lo', 'up'], {
      timeout: COMMAND_TIMEOUT_MS,
    });
  } catch (err) {
    await removeNetns(path).catch(() => undefined);
    throw new Error(`cannot create network namespace at ${path}: ${commandError(err)}`, { cause: err });
  }
}

/**
 * Unmount and delete a pinned namespace; a path that is already gone is not an error. The
 * unmount is lazy (MNT_DETACH), as containerd's and `ip netns del`'s are: an fd open on
 * the path (a dial in flight, anyone's) makes a plain one fail with EBUSY.
 */
export async function removeNetns(path: string): Promise<void> {
  if (isNetnsMounted(path)) {
    try {
      await run('umount', ['--lazy', path], { timeout: COMMAND_TIMEOUT_MS });
    } catch (err) {
      // Lost a race with another remover: the mount is gone, which is what we wanted.
      if (isNetnsMounted(path)) {
        throw new Error(`cannot unmount network namespace ${path}: ${commandError(err)}`, { cause: err });
      }
    }
  }
  await fs.rm(path, { force: true });
}

/** True when `path` is a live namespace file (after a reboot it is an empty plain file). */
export function isNetnsMounted(path: string): boolean {
  try {
    return statfsSync(path).type === NSFS_MAGIC;
  } catch {
    return false;
  }
}

function commandError(err: unknown): string {
  const e = err as { stderr?: string; message?: string };
  return (e.stderr?.trim() || e.message || String(err)).split('\n')[0] ?? '';
}
