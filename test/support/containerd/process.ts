// The containerd process: launched with its log in a file, ready once its CRI answers
// Version, stopped with SIGTERM (SIGKILL after a grace).

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { delimiter } from 'node:path';
import { until } from '../until';
import { criVersion } from './cri-raw';
import { SYSTEM_PATH } from './prerequisites';

const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 5_000;

export function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function exitOf(child: ChildProcess): Promise<void> {
  if (!running(child)) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

export async function stopProcess(child: ChildProcess): Promise<void> {
  if (!running(child)) return;
  const exited = exitOf(child);
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    if (running(child)) child.kill('SIGKILL');
  }, STOP_GRACE_MS);
  await exited;
  clearTimeout(timer);
}

export function logTail(logFile: string, lines = 30): string {
  try {
    return readFileSync(logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Start `containerd --config configFile`, its stdout and stderr appended to logFile. Its
 * PATH: `binDir` (the release's own dir, so it starts the shim of its own release: it looks
 * `containerd-shim-runc-v2` up on PATH first), then the system dirs (runc, mount, ...).
 */
export function launchContainerd(tools: { containerd: string; binDir: string | undefined }, configFile: string, logFile: string): ChildProcess {
  const fd = openSync(logFile, 'a');
  try {
    const path = [tools.binDir, SYSTEM_PATH, process.env.PATH].filter(Boolean).join(delimiter);
    const child = spawn(tools.containerd, ['--config', configFile], {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, PATH: path },
    });
    child.on('error', () => undefined); // surfaces as an early exit in waitReady
    return child;
  } finally {
    closeSync(fd);
  }
}

/** Resolve once containerd's CRI answers Version; fail (and stop it) if it exits or takes too long. */
export async function waitReady(child: ChildProcess, socket: string, logFile: string): Promise<void> {
  let exited = false;
  void exitOf(child).then(() => (exited = true));
  let outcome: 'ready' | 'exited';
  try {
    outcome = await until(
      "containerd's CRI to answer Version",
      async () => {
        if (exited || !running(child)) return 'exited' as const;
        if (!existsSync(socket)) throw new Error(`no socket ${socket} yet`);
        return (await criVersion(`unix://${socket}`, 2_000)).runtime_name ? ('ready' as const) : undefined;
      },
      { timeoutMs: READY_TIMEOUT_MS, intervalMs: 100 },
    );
  } catch (err) {
    await stopProcess(child);
    throw new Error(`${(err as Error).message}; last lines of ${logFile}:\n${logTail(logFile)}`);
  }
  if (outcome === 'exited') {
    throw new Error(
      `containerd exited (${child.exitCode ?? child.signalCode}) before its CRI answered; last lines of ${logFile}:\n${logTail(logFile)}`,
    );
  }
}
