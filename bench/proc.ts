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

/** The whole machine's CPU time, busy and in all, from the first line of /proc/stat (in ticks). */
function machineCpuTicks(): { busy: number; total: number } {
  const ticks = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = ticks[3]! + ticks[4]!; // idle, iowait
  const total = ticks.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/** A window of the machine's time busy under this fraction counts as quiet. */
const MACHINE_QUIET_BUSY = 0.15;
const MACHINE_QUIET_WINDOW_MS = 200;
const MACHINE_QUIET_GIVE_UP_MS = 5_000;

/**
 * Wait until the whole machine has been nearly idle for a window: what the measurement
 * before left running (a server's cleanup after 2000 connections, a kubectl exiting) must
 * not land in a latency loop measured after it. Returns the milliseconds waited (at most
 * about 5 s: a machine that never goes quiet is measured as it is).
 */
export async function untilMachineQuiet(): Promise<number> {
  const started = Date.now();
  for (;;) {
    const before = machineCpuTicks();
    await new Promise((resolve) => setTimeout(resolve, MACHINE_QUIET_WINDOW_MS));
    const after = machineCpuTicks();
    const busy = (after.busy - before.busy) / Math.max(1, after.total - before.total);
    const waited = Date.now() - started;
    if (busy < MACHINE_QUIET_BUSY || waited >= MACHINE_QUIET_GIVE_UP_MS) return waited;
  }
}
