// Starts test/support/pod-app.js inside a network namespace (or on the host) and waits
// until it listens. Each app is killed by its owner through stop().

import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const POD_APP = join(__dirname, 'pod-app.js');

export interface PodApp {
  port: number;
  proc: ChildProcess;
  stop(): Promise<void>;
}

export type PodAppMode =
  | 'echo'
  | 'answer-after-eof'
  | 'never-close'
  | 'reset'
  | 'flood'
  | 'ignore'
  | 'sink'
  | `source:${number}`
  | `pattern:${number}:${number}:${number}`
  | `reply-and-close:${number}`
  | `trickle-after-eof:${number}:${number}`;

export async function startPodApp(
  netnsPath: string | null,
  mode: PodAppMode,
  host = '127.0.0.1',
  port = 0,
): Promise<PodApp> {
  const node = [process.execPath, POD_APP, mode, host, String(port)];
  const [cmd, ...args] = netnsPath === null ? node : ['nsenter', `--net=${netnsPath}`, ...node];
  const proc = spawn(cmd!, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const listening = await new Promise<number>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', (line) => resolve((JSON.parse(line) as { port: number }).port));
    proc.once('exit', (code) => reject(new Error(`pod app ${mode} exited with ${code}`)));
  });
  return {
    port: listening,
    proc,
    async stop() {
      proc.kill('SIGKILL');
      await exited;
    },
  };
}
