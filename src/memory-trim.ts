// Giving memory back once the server is quiet. The buffers of finished connections are
// garbage until V8 collects them, and then sit in glibc's arenas, which keep their pages:
// without help RSS stays at the peak of the last burst. So when the last forwarded
// connection has ended and none has started for TRIM_DELAY_MS, the process collects once
// and hands the free pages back to the kernel (malloc_trim). A busy server keeps its
// working set: nothing here runs while connections are live.

import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import { addon } from './netns/addon';

/** Quiet this long after the last connection ended before trimming (ends come in bursts). */
const TRIM_DELAY_MS = 2_000;

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

let live = 0;
let timer: NodeJS.Timeout | undefined;

function trimIfQuiet(): void {
  timer = undefined;
  if (live > 0) return;
  collect?.();
  addon.trimMemory();
}

/** A forwarded connection started. */
export function connectionStarted(): void {
  live++;
}

/** A forwarded connection ended: once none is left, trim after a quiet while. */
export function connectionEnded(): void {
  if (--live > 0 || timer !== undefined) return;
  timer = setTimeout(trimIfQuiet, TRIM_DELAY_MS);
  timer.unref();
}
