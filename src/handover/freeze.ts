// The old process's half of moving sessions: freeze every movable session, wait until each
// is quiet (nothing of ours in flight either way, no dial under way, the parsers between
// frames), and take the state of those that are.
//
// In two rounds, so that idle sessions are not held while busy ones drain: every session
// is frozen; those already quiet a moment later are thawed again and go on while the busy
// ones finish writing what is queued; then the idle ones are frozen again (quiet at once,
// as a rule) and all are taken together. A session that does not quiet within the deadline
// (its app stopped reading what we must write first) is thawed and stays, to drain here as
// before: an upgrade never waits on one slow app for long.

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

/** One event-loop turn: writes complete and bytes parse in its poll phase. */
function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Wait until every session is quiet or the deadline passes; those still busy. A session
 * that ends meanwhile (its client went away) leaves the registry and is waited for no more:
 * it never quiets, and waiting for it would pause every other session until the deadline.
 */
async function untilQuiet(sessions: MovableSession[], registry: MovableSessions, deadline: number): Promise<MovableSession[]> {
  let busy = sessions;
  for (;;) {
    busy = busy.filter((s) => registry.has(s) && !s.quiesce());
    if (busy.length === 0 || performance.now() >= deadline) return busy;
    await turn();
    if (busy.some((s) => registry.has(s) && !s.quiesce())) await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** Freeze `batch` (sessions of `registry`) until quiet, and take the state of those that are. */
export async function freezeSessions(batch: MovableSession[], registry: MovableSessions, deadlineMs = QUIET_DEADLINE_MS): Promise<FrozenSessions> {
  const deadline = performance.now() + deadlineMs;
  // Sessions that ended since the batch was drawn up are not frozen.
  const all = batch.filter((s) => registry.has(s));
  for (const s of all) s.freeze();
  await turn();
  const idle: MovableSession[] = [];
  const busy: MovableSession[] = [];
  for (const s of all) if (registry.has(s)) (s.quiesce() ? idle : busy).push(s);
  let stuck: MovableSession[] = [];
  if (busy.length > 0) {
    for (const s of idle) s.thaw();
    stuck = await untilQuiet(busy, registry, deadline);
    for (const s of idle) s.freeze();
  }
  stuck.push(...(await untilQuiet(idle, registry, deadline)));
  const kept = new Set(stuck);
  for (const s of kept) s.thaw();
  // Those that ended meanwhile finish ending as they would have (a close handshake, a linger).
  for (const s of all) if (!registry.has(s)) s.thaw();
  // A session that ended meanwhile (its peer closed) is gone from the registry.
  const moving = all.filter((s) => !kept.has(s) && registry.has(s));
  const fds: number[] = [];
  const states = moving.map((s) => s.exportState(fds));
  return { moving, states, fds, kept: kept.size };
}
