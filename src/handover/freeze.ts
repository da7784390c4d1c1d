// The old process's half of moving sessions: freeze every movable session at once, wait
// until each is quiet (nothing of ours in flight either way, no dial under way, the parsers
// between frames), and take the state of those that are. A session that does not quiet in
// time (its app stopped reading what we must write first) is thawed and stays, to drain
// here as before: an upgrade never waits on one slow app for long.

import type { MovableSession, MovableSessions, MovedSession } from './movable';

/** How long sessions get to reach a clean boundary. */
export const QUIET_DEADLINE_MS = 2_000;

export interface FrozenSessions {
  /** Quiet: their state and their sockets' fds (state indexes into fds). */
  moving: MovableSession[];
  states: MovedSession[];
  fds: number[];
  /** Thawed again: they stay with this process. */
  kept: number;
}

export async function freezeSessions(sessions: MovableSessions, deadlineMs = QUIET_DEADLINE_MS): Promise<FrozenSessions> {
  const frozen = [...sessions];
  for (const s of frozen) s.freeze();
  const deadline = performance.now() + deadlineMs;
  let waiting = frozen;
  for (;;) {
    waiting = waiting.filter((s) => !s.isQuiet);
    if (waiting.length === 0 || performance.now() >= deadline) break;
    // Writes complete and bytes parse in the poll phase: look again after it.
    await new Promise((resolve) => setImmediate(resolve));
    if (waiting.length > 0 && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 1));
  }
  const stuck = new Set(waiting);
  for (const s of stuck) s.thaw();
  // A session that ended while frozen (its peer closed) is gone from the registry.
  const moving = frozen.filter((s) => !stuck.has(s) && sessions.has(s));
  const fds: number[] = [];
  const states = moving.map((s) => s.exportState(fds));
  return { moving, states, fds, kept: stuck.size };
}

