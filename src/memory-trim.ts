// Giving memory back once the server is quiet. The buffers of finished connections are
// garbage until V8 collects them, and then sit in glibc's arenas, which keep their pages:
// without help RSS stays at the peak of the last burst. So when the last forwarded
// connection has ended and none has started for TRIM_DELAY_MS, the process collects once
// and hands the free pages back to the kernel (malloc_trim). A busy server keeps its
// working set: nothing here runs while connections are live.
//
// Only a burst that left RSS well above where the last trim left it is trimmed. The full
// collection is not free for what follows: with the last session gone, the maps and
// per-session closures that V8's optimized data-path code was specialised on die, that
// code is thrown away ("weak objects" deopts of some 40 functions, Node's stream and socket
// code among them), and the next session runs about 1.5 s at twice the CPU per chunk while
// it is compiled again. Measured behind kubectl: the 64-byte round trip's p99 went from
// 0.7-0.9 ms to 2-3.5 ms for a session that started after a trim. Trimming a few MiB is not
// worth that; trimming the tens of MiB a load burst leaves is.

import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { addon } from './netns/addon';

/**
 * Quiet this long after the last connection ended before trimming. A pause shorter than
 * this (a developer between two requests, a client between batches) must not pay the
 * recompile that follows a trim: with 2 s, the proxy bench's pauses of 2-4 s between our
 * measurements each drew a trim, and the sessions after them spent 0.76-0.86x containerd's
 * CPU per connection (0.65-0.67x without trims) and had a p99 1.1-4.3x containerd's. 8 s is
 * V8's own delay before its memory reducer's full collections, and keeps the promise of
 * RSS back within 32 MiB of the start 10 s after a load ends.
 */
export const TRIM_DELAY_MS = 8_000;
/** RSS above what the last trim (or the start) left that makes a trim worth it. */
export const TRIM_WORTH_BYTES = 16 * 2 ** 20;

/**
 * A full collection on demand. Node exposes gc() only with --expose-gc; setting the flag at
 * run time and taking the function from a fresh context is the documented way around that
 * (v8.setFlagsFromString). Without it, only the pages V8 has already freed are trimmed.
 */
const collect: (() => void) | undefined = (() => {
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as () => void;
  } catch {
    return undefined;
  }
})();

/**
 * A first connection after this much quiet starts a burst: RSS then is the level the burst
 * is measured from, if it is lower than what the last trim left. V8's own memory reducer
 * often gives pages back in the quiet after our check, and a burst measured from the
 * higher figure went untrimmed though it left RSS 16 MiB above where it had started.
 */
const BURST_AFTER_QUIET_MS = 1_000;

let live = 0;
let timer: NodeJS.Timeout | undefined;
/** RSS when the first connection started (the server fully up), after each trim, or lower at a burst's start. */
let rssLeft: number | undefined;
/** When the last connection ended (Date.now()). */
let quietSince = 0;
let trims = 0;

function trimIfQuiet(): void {
  timer = undefined;
  if (live > 0) return;
  const rss = process.memoryUsage.rss();
  // A quiet server whose RSS fell back by itself (V8 released pages) starts from there.
  if (rssLeft !== undefined && rss - rssLeft < TRIM_WORTH_BYTES) {
    rssLeft = Math.min(rssLeft, rss);
    return;
  }
  collect?.();
  addon.trimMemory();
  rssLeft = process.memoryUsage.rss();
  trims++;
}

/** Trims done so far (a metric). */
export function memoryTrims(): number {
  return trims;
}

/** A forwarded connection started. */
export function connectionStarted(): void {
  if (live++ > 0) return;
  // Only after a quiet while: a client that connects again at once starts no burst, and
  // reading RSS is a read of /proc.
  if (rssLeft === undefined || Date.now() - quietSince >= BURST_AFTER_QUIET_MS) {
    const rss = process.memoryUsage.rss();
    rssLeft = rssLeft === undefined ? rss : Math.min(rssLeft, rss);
  }
}

/** A forwarded connection ended: once none is left, trim after a quiet while. */
export function connectionEnded(): void {
  if (--live > 0) return;
  quietSince = Date.now();
  if (timer !== undefined) return;
  timer = setTimeout(trimIfQuiet, TRIM_DELAY_MS);
  timer.unref();
}
