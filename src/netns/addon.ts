// Loads the native setns addon (native/netns_dial.c, built by node-gyp during npm ci).

import { join } from 'node:path';
import { PACKAGE_ROOT } from '../package-info';

/** What the addon reports for a dial that failed: the errno of each failed step. */
export interface RawDialResult {
  /** -1. */
  fd: number;
  /** errno of the 127.0.0.1 connect (0: not tried or succeeded). */
  errno4: number;
  /** errno of the [::1] connect (0: not tried or succeeded). */
  errno6: number;
  /**
   * Set when the namespace could not be entered ("save", "open", "setns"), or when the
   * dial failed and the namespace it entered is not the one the path names now ("stat").
   */
  nsStage?: string;
  nsErrno: number;
}

/** dialSpare's connect from a spare socket did not end at once: dialInNetns takes it on. */
export type SpareDialLeftover = { connectingFd: number; errno4?: never } | { errno4: number; connectingFd?: never };

interface NetnsAddon {
  /**
   * The connected socket's fd, or what failed. `connectingFd` and `errno4` hand on a
   * dialSpare that did not end at once: its connect still under way (the dial waits for
   * it, then tries [::1] if it fails), or its failure (the dial tries [::1] only).
   */
  dialInNetns(netnsPath: string | null, port: number, timeoutMs: number, connectingFd?: number, errno4?: number): Promise<number | RawDialResult>;
  /**
   * Synchronously, on this thread: connect a spare socket the namespace handle of
   * `netnsPath` keeps (made in the namespace by an earlier dial) to 127.0.0.1:port. The
   * connected fd; -1 if the handle has no spare; else what dialInNetns is to go on with.
   */
  dialSpare(netnsPath: string, port: number): number | SpareDialLeftover;
  /** Close the kept namespace handle of `path` (of every path without one): how many were closed or left to their dials. */
  forgetNetns(path?: string): number;
  /** Close the kept namespace handles no dial has used for `idleMs`: how many are left. */
  closeIdleNetns(idleMs: number): number;
  /** The socket's pending error (SO_ERROR, cleared by reading it): 0 if none. */
  takeSocketError(fd: number): number;
  /** Give the free pages of malloc's arenas back to the kernel (malloc_trim(0)). */
  trimMemory(): boolean;
  /** A close-on-exec duplicate of `fd` (F_DUPFD_CLOEXEC); throws on failure. */
  dupFd(fd: number): number;
  /** A close-on-exec SOCK_SEQPACKET socketpair for passing fds (native/fd_passing.c). */
  fdChannel(): [number, number];
  /** Pass 1..250 fds in one message (SCM_RIGHTS); blocking. The sender keeps its own. */
  sendFds(channel: number, fds: number[]): void;
  /** Take the next message's fds (close-on-exec); blocking. */
  recvFds(channel: number): number[];
}

const ADDON_PATH = join(PACKAGE_ROOT, 'native', 'build', 'Release', 'netns_dial.node');

function load(): NetnsAddon {
  try {
    return require(ADDON_PATH) as NetnsAddon;
  } catch (err) {
    throw new Error(
      `cannot load the native netns addon at ${ADDON_PATH} (built by "npm ci"; rebuild with "npm run install"): ${(err as Error).message}`,
    );
  }
}

export const addon: NetnsAddon = load();
