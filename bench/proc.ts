// CPU time of another process, as the kernel counts it: utime + stime of /proc/<pid>/stat.

import { readFileSync } from 'node:fs';
import { untilSteady } from '../test/support/until';

const CLOCK_TICKS_PER_SECOND = 100;

export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
}

/** Wait until the process's CPU time stops growing: it has finished with a transfer's last bytes. */
export function untilCpuQuiet(pid: number): Promise<number> {
  return untilSteady(`process ${pid} to go quiet`, () => cpuSeconds(pid), { quietMs: 100, intervalMs: 20 });
}

/**
 * CPU seconds that `pids` spend on `run` (e.g. our proxy and the containerd it calls), in
 * total and each, counted from quiet to quiet, so neither what came before nor the tail
 * of the run's last connections is misplaced.
 */
export async function cpuOf<T>(pids: number[], run: () => Promise<T>): Promise<{ result: T; cpuSeconds: number; eachCpuSeconds: number[] }> {
  const quiet = async (): Promise<number[]> => {
    const each: number[] = [];
    for (const pid of pids) each.push(await untilCpuQuiet(pid));
    return each;
  };
  const before = await quiet();
  const result = await run();
  const eachCpuSeconds = (await quiet()).map((after, i) => after - before[i]!);
  return { result, cpuSeconds: eachCpuSeconds.reduce((a, b) => a + b, 0), eachCpuSeconds };
}
