// Giving memory back after connections end. Their buffers are freed by V8's GC into glibc's
// arenas, which keep the pages (RSS stays at its peak); malloc_trim(0) returns the free
// ones. Process-wide, like the memory it trims: one timer for the whole process, armed by
// connections that end, so a quiet server trims once and then never again.

import { addon } from './netns/addon';

/** After a connection ends, wait this long (more ends come in bursts) before trimming. */
const TRIM_DELAY_MS = 2_000;

let timer: NodeJS.Timeout | undefined;

function trim(): void {
  timer = undefined;
  addon.trimMemory();
}

/** Something sizeable was freed: trim once the burst has passed. */
export function trimMemorySoon(): void {
  if (timer !== undefined) return;
  timer = setTimeout(trim, TRIM_DELAY_MS);
  timer.unref();
}
