// Sessions an upgrade can move to the new process (upgrade.ts). Each protocol front end
// registers its sessions here while they run. The old process freezes them (no more
// reading either side, no timers), waits until each is quiet (nothing of ours in flight
// either way), exports their state with their sockets' fds, and either releases them (the
// new process owns them) or thaws them (the upgrade failed, or the session did not quiet in
// time and stays to drain here).

import type { Socket } from 'node:net';
import type { ChannelSessionState } from '../streaming/portforward/websocket';
import type { SpdyPortForwardState } from '../streaming/portforward/spdy';

export type MovedProtocol = 'spdy' | 'spdy-websocket' | 'websocket';

/** One session as it crosses to the new process: JSON, plus the fds its indexes name. */
export interface MovedSession {
  protocol: MovedProtocol;
  grant: { sandboxId: string; ports: number[]; tag: string; peer: string };
  /** The client connection: its index among the fds passed. */
  socketFd: number;
  /**
   * When the old process froze it: process.hrtime.bigint() (CLOCK_MONOTONIC, the same clock
   * in both processes), as a string. The new process reports the pause from it.
   */
  frozenAt: string;
  /** WebSocket transports: the subprotocol, and what ws had read but not parsed, re-framed (base64). */
  ws?: { protocol: string; pending: string };
  spdy?: SpdyPortForwardState;
  channels?: ChannelSessionState;
}

export interface MovableSession {
  readonly protocol: MovedProtocol;
  /** The client connection (the streaming server tracks it). */
  readonly socket: Socket;
  /** Stop reading the client and every timer; what is queued goes on being written. */
  freeze(): void;
  /**
   * One step towards a clean boundary, true once there: nothing in flight either way, no
   * dial under way. The pods are read until what the client sent has reached them, then
   * no longer.
   */
  quiesce(): boolean;
  /** Go on where freeze() stopped. */
  thaw(): void;
  /** Its state; its sockets' fds are appended to `fds`, the state names their indexes. */
  exportState(fds: number[]): MovedSession;
  /** The new process owns it now: close this process's copies of its sockets, silently. */
  release(): void;
}

/** Adopted sessions, built paused in the new process: started once the old one lets go. */
export interface AdoptedSession {
  readonly protocol: MovedProtocol;
  readonly frozenAt: bigint;
  start(): void;
}

export class MovableSessions implements Iterable<MovableSession> {
  readonly #sessions = new Set<MovableSession>();

  add(session: MovableSession): void {
    this.#sessions.add(session);
  }

  delete(session: MovableSession): void {
    this.#sessions.delete(session);
  }

  has(session: MovableSession): boolean {
    return this.#sessions.has(session);
  }

  get size(): number {
    return this.#sessions.size;
  }

  [Symbol.iterator](): Iterator<MovableSession> {
    return this.#sessions[Symbol.iterator]();
  }
}

/** The moment a session is frozen, in the form MovedSession.frozenAt carries. */
export function frozenNow(): bigint {
  return process.hrtime.bigint();
}
