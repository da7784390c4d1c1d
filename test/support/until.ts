// Waiting on a condition instead of on the clock: the one polling helper of the tests and
// the bench. A check returns undefined, null or false while the condition does not hold,
// and anything else (the value the caller wants) once it does; a check that throws counts
// as "not yet", and its error is the state a timeout reports.

import { setTimeout as sleep } from 'node:timers/promises';

export interface UntilOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number;
  /** Wait this long between checks (default 10 ms). */
  intervalMs?: number;
  /** Describes the state for the timeout message (default: what the last check returned or threw). */
  state?: () => string;
}

type Pending = undefined | null | false;

function describe(value: unknown): string {
  if (value instanceof Error) return `threw ${value.message}`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * Check until the condition holds and resolve with the check's value; reject with a
 * message naming `what` and the last state when it does not hold within the timeout.
 */
export async function until<T>(
  what: string,
  check: () => T | Pending | Promise<T | Pending>,
  options: UntilOptions = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const intervalMs = options.intervalMs ?? 10;
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== null && value !== false) return value;
      last = value;
    } catch (err) {
      last = err instanceof Error ? err : new Error(String(err));
    }
    if (Date.now() >= deadline) {
      const state = options.state ? options.state() : describe(last);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last state: ${state})`);
    }
    await sleep(intervalMs);
  }
}

export interface SteadyOptions {
  /** How long the sample must stay the same (default 300 ms). */
  quietMs?: number;
  /** Sample this often (default quietMs / 5). */
  intervalMs?: number;
  /** Give up after this long (default 10 s). */
  timeoutMs?: number;
}

/**
 * Wait until `sample` (compared as JSON) has not changed for `quietMs`: for a flow that
 * stops by itself (backpressure reaching the writer, fds closing, CPU going quiet) and has
 * no event to say so. Resolves with the steady value.
 */
export async function untilSteady<T>(what: string, sample: () => T | Promise<T>, options: SteadyOptions = {}): Promise<T> {
  const quietMs = options.quietMs ?? 300;
  const intervalMs = options.intervalMs ?? Math.max(1, Math.floor(quietMs / 5));
  let last = JSON.stringify(await sample());
  let since = Date.now();
  let samples = 0;
  return until(
    `${what} (unchanged for ${quietMs} ms)`,
    async () => {
      const value = await sample();
      const now = JSON.stringify(value);
      if (now !== last) {
        last = now;
        since = Date.now();
        samples = 0;
        return undefined;
      }
      // Both the time and a few samples: one late timer must not pass for a quiet period.
      return ++samples >= 3 && Date.now() - since >= quietMs ? { value } : undefined;
    },
    { timeoutMs: options.timeoutMs, intervalMs, state: () => last },
  ).then((r) => r.value);
}
