// A server process with one sandbox and apps in it: the world of most single-server tests
// and of the transfer benchmarks. A POD sandbox with its own namespace as root, a
// host-network one otherwise.

import { startPodApp, type PodApp, type PodAppMode } from './apps';
import { criClient, runSandbox, type CriTestClient } from './cri-client';
import { startServer, type ServerProcess } from './server-process';

export interface AppSandbox {
  server: ServerProcess;
  cri: CriTestClient;
  sandboxId: string;
  netns: string | null;
  /** One app per mode asked for, in that order. */
  apps: PodApp[];
  /** Stop the apps, remove the sandbox, stop the server: its exit code. */
  stop(): Promise<number | null>;
}

export async function startAppSandbox(modes: PodAppMode[], serverArgs: string[] = [], name = 'apps'): Promise<AppSandbox> {
  const server = await startServer({ args: serverArgs });
  const cri = criClient(server.criAddress);
  const { id: sandboxId, netns } = await runSandbox(cri, name, process.getuid?.() !== 0);
  const apps: PodApp[] = [];
  for (const mode of modes) apps.push(await startPodApp(netns, mode));
  return {
    server,
    cri,
    sandboxId,
    netns,
    apps,
    async stop() {
      for (const app of apps) await app.stop();
      await cri.call('RemovePodSandbox', { pod_sandbox_id: sandboxId });
      cri.close();
      return server.stop();
    },
  };
}
