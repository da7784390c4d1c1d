// Runs the real CLI (`cri-portforward serve`) as a child process in a temp dir and waits
// for its "ready" line. Every test that starts one stops it; stop() waits for the exit.

import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { mountsUnder } from './mounts';
import { until } from './until';

export const CLI_PATH = resolve(__dirname, '..', '..', 'src', 'cli.js');

export interface ServerProcess {
  dir: string;
  criSocket: string;
  criAddress: string;
  stateDir: string;
  streamBaseUrl: string;
  proc: ChildProcess;
  /** Every JSON log line so far. */
  logs: Record<string, unknown>[];
  /** Everything written to stderr so far (by this process and any process that inherited it). */
  stderr(): string;
  /** SIGTERM and wait; resolves to the exit code. */
  stop(): Promise<number | null>;
  /** Resolves to the exit code once the process has exited (by itself or stopped). */
  exited: Promise<number | null>;
}

export interface StartOptions {
  dir?: string;
  args?: string[];
  spawn?: SpawnOptions;
  readyTimeoutMs?: number;
  /** The cli.js to run (default CLI_PATH, the tests' build): e.g. one in a copy of the built tree. */
  cli?: string;
}

export function makeTempDir(prefix = 'cripf-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export async function startServer(options: StartOptions = {}): Promise<ServerProcess> {
  const dir = options.dir ?? makeTempDir();
  const criSocket = join(dir, 'cri.sock');
  const stateDir = join(dir, 'state');
  const args = [options.cli ?? CLI_PATH, 'serve', '--cri-socket', criSocket, '--state-dir', stateDir, ...(options.args ?? [])];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options.spawn });
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((res) => proc.once('exit', (code) => res(code)));
  const ready = await new Promise<Record<string, unknown>>((resolveReady, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`server not ready in time; stderr: ${stderr}`));
    }, options.readyTimeoutMs ?? 15_000);
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        entry = { unparsed: line };
      }
      logs.push(entry);
      if (process.env.CRI_PORTFORWARD_TEST_SHOW_LOGS === '1') process.stderr.write(`server: ${line}\n`);
      if (entry.msg === 'ready') {
        clearTimeout(timer);
        resolveReady(entry);
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before ready; log: ${JSON.stringify(logs)}; stderr: ${stderr}`));
    });
  });
  return {
    dir,
    criSocket,
    criAddress: ready.criSocket as string,
    stateDir,
    streamBaseUrl: ready.streamBaseUrl as string,
    proc,
    logs,
    stderr: () => stderr,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}

export function serverFds(server: Pick<ServerProcess, 'proc'>): number {
  return readdirSync(`/proc/${server.proc.pid}/fd`).length;
}

/**
 * Wait until the server has closed what it opened since `fdsAtStart` (its sessions,
 * streams and pod sockets close once their clients are gone), for at most 5 s; returns
 * the count then, for the caller to assert on.
 */
export async function serverFdsSettled(server: Pick<ServerProcess, 'proc'>, fdsAtStart: number): Promise<number> {
  await until('the server to close its fds', () => serverFds(server) <= fdsAtStart, { timeoutMs: 5_000, intervalMs: 50 }).catch(
    () => undefined, // the caller's assertion reports the count
  );
  return serverFds(server);
}

/** One sample of the server's /metrics (the first series of that name, labels included); 0 when absent. */
export async function serverMetric(server: Pick<ServerProcess, 'streamBaseUrl'>, name: string): Promise<number> {
  const res = await fetch(`${server.streamBaseUrl}/metrics`);
  const line = (await res.text()).split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

/** Whether the server has logged a line with these fields (e.g. { msg: 'forward ended', port }). */
export function hasLogged(server: Pick<ServerProcess, 'logs'>, fields: Record<string, unknown>): boolean {
  return server.logs.some((l) => Object.entries(fields).every(([k, v]) => l[k] === v));
}

/**
 * End-of-suite check: the server process has exited, its socket file is gone and no
 * namespace is still mounted under its dir. Cleans up whatever it finds, then fails if it
 * found anything, so one leak cannot hide another.
 */
export function cleanUpAndAssertNothingLeft(server: ServerProcess | undefined, dir: string): void {
  const leftovers: string[] = [];
  if (server && server.proc.exitCode === null && server.proc.signalCode === null) {
    leftovers.push(`server process ${server.proc.pid} still running`);
    server.proc.kill('SIGKILL');
  }
  if (existsSync(join(dir, 'cri.sock'))) leftovers.push('CRI socket file left behind');
  for (const mount of mountsUnder(dir)) {
    leftovers.push(`mount left behind: ${mount}`);
    execFileSync('umount', [mount]);
  }
  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(leftovers, []);
}

/** The server's resident memory now and its peak so far (VmRSS and VmHWM of /proc/<pid>/status), in bytes. */
export function serverMemory(server: Pick<ServerProcess, 'proc'>): { rssBytes: number; peakRssBytes: number } {
  const status = readFileSync(`/proc/${server.proc.pid}/status`, 'utf8');
  const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rssBytes: kib('VmRSS'), peakRssBytes: kib('VmHWM') };
}
