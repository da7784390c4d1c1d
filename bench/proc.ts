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
