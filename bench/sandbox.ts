// A server process with one sandbox and one app in it, for a transfer benchmark: a POD
// sandbox with its own namespace as root, a host-network one otherwise.

import { rmSync } from 'node:fs';
import { startPodApp, type PodApp, type PodAppMode } from '../test/support/apps';
import { criClient, runSandbox, type CriTestClient } from '../test/support/cri-client';
import { startServer, type ServerProcess } from '../test/support/server-process';

export interface BenchSandbox {
  server: ServerProcess;
  cri: CriTestClient;
  sandboxId: string;
  app: PodApp;
  stop(): Promise<void>;
}

export async function startBenchSandbox(mode: PodAppMode): Promise<BenchSandbox> {
  const server = await startServer({ args: ['--log-level', 'warn'] });
  const cri = criClient(server.criAddress);
  const root = process.getuid?.() === 0;
  const { id: sandboxId, netns } = await runSandbox(cri, 'bench', !root);
  const app = await startPodApp(netns, mode);
  return {
    server,
    cri,
    sandboxId,
    app,
    async stop() {
      await app.stop();
      await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
      cri.close();
      await server.stop();
      rmSync(server.dir, { recursive: true, force: true });
    },
  };
}
