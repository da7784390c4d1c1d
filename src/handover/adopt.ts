// The new process's half of moving sessions: each handed-over session is rebuilt by its
// protocol front end, paused, from its state and the fds that came with it. Nothing is read
// or written before start(): until the old process has let go, it may still take them back.

import type { ForwardDeps } from '../streaming/portforward/forward';
import { adoptPlainSpdy } from '../streaming/portforward/spdy';
import { adoptTunnel } from '../streaming/portforward/tunnel';
import { adoptChannels } from '../streaming/portforward/websocket';
import type { StreamingServer } from '../streaming/server';
import type { AdoptedSession, MovedSession } from './movable';

const ADOPTERS = { spdy: adoptPlainSpdy, 'spdy-websocket': adoptTunnel, websocket: adoptChannels } as const;

export function adoptSessions(moved: MovedSession[], fds: number[], deps: ForwardDeps, streaming: StreamingServer): AdoptedSession[] {
  return moved.map((m) => ADOPTERS[m.protocol](m, streaming.adoptConnection(fds[m.socketFd]!), fds, deps));
}
