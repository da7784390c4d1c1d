// A server process with one sandbox and one app in it, for a transfer benchmark
// (test/support/app-sandbox.ts, quiet logs, its temp dir removed at the end).

import { rmSync } from 'node:fs';
import type { PodApp, PodAppMode } from '../test/support/apps';
import { startAppSandbox } from '../test/support/app-sandbox';
import type { CriTestClient } from '../test/support/cri-client';
import type { ServerProcess } from '../test/support/server-process';

export interface BenchSandbox {
  server: ServerProcess;
  cri: CriTestClient;
  sandboxId: string;
  app: PodApp;
  stop(): Promise<void>;
}

/** `logLevel`: warn (quiet) unless a figure is about what the log lines cost. */
export async function startBenchSandbox(mode: PodAppMode, logLevel: 'warn' | 'info' = 'warn'): Promise<BenchSandbox> {
  const world = await startAppSandbox([mode], ['--log-level', logLevel], 'bench');
  return {
    server: world.server,
    cri: world.cri,
    sandboxId: world.sandboxId,
    app: world.apps[0]!,
    async stop() {
      await world.stop();
      rmSync(world.server.dir, { recursive: true, force: true });
    },
  };
}
